"""Fixtures shared by the test files: the one writer of small VOC sets, and one small saved model."""
from pathlib import Path

import pytest
from PIL import Image

from detection.core.config import SPPConfig
from detection.data.generated import GeneratedObject, annotation_xml


def _write_voc(root: Path, objects_by_image: dict, split: str = "test", size: tuple[int, int] = (64, 48),
               image_sizes: dict | None = None) -> Path:
    """Write a VOC-format set under ``root`` (black JPEGs, annotation files, one split) and return ``root``.

    ``objects_by_image`` maps an image id to its objects, each ``(name, (xmin, ymin, xmax, ymax))`` or
    ``(name, box, difficult)``, the box 1-based inclusive as the XML holds it. ``size`` is the
    (width, height) the annotations give; ``image_sizes`` overrides the JPEGs' sizes per image id.
    """
    root = Path(root)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in objects_by_image.items():
        Image.new("RGB", (image_sizes or {}).get(image_id, size)).save(root / "JPEGImages" / f"{image_id}.jpg")
        described = []
        for name, box, *difficult in objects:  # annotation_xml takes 0-based boxes and writes them 1-based
            described.append(GeneratedObject(name, tuple(v - 1 for v in box), False, bool(difficult and difficult[0])))
        (root / "Annotations" / f"{image_id}.xml").write_bytes(annotation_xml(image_id, size, described))
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in objects_by_image))
    return root


@pytest.fixture
def write_voc():
    """The writer of small VOC sets: ``write_voc(root, {image_id: [(name, box[, difficult]), ...]}, split=, size=)``."""
    return _write_voc


@pytest.fixture(scope="session")
def untrained_model(tmp_path_factory) -> Path:
    """A saved detector with random (seeded) SVMs on a small ZF-5 pyramid, classes ``a`` and ``b``, built
    once per session for the tests that need a model file but no training. Random SVMs: most windows pass."""
    from detection.detector import Detector

    config = SPPConfig().replace(features={"backbone": "zf5", "pyramid_levels": (1, 2), "scales": (120,)},
                                 proposals={"resize_width": 160, "max_proposals": 60})
    path = tmp_path_factory.mktemp("untrained-model") / "model.pt"
    Detector.untrained(config, ("a", "b"), "cpu").save(path)
    return path
