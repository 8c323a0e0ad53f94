"""The realistic generated data set: real cut-outs on other photographs, deterministic, valid VOC."""
import builtins
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from detection.core.images import load_image
from detection.data import realistic
from detection.data.realistic import (
    CLASSES,
    REALISTIC_CLASSES,
    SMALL_OBJECTS_MAX_EXTENT,
    MissingDependencyError,
    class_sprites,
    draw_realistic_image,
    make_realistic_dataset,
)
from detection.data.voc import VOC_CLASSES, VOCDataset
from tools.cli import main



NUM = 2 * len(REALISTIC_CLASSES)  # every class first in two images of each split


def file_bytes(voc):
    return {str(p.relative_to(voc)): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_realistic_dataset(tmp_path_factory.mktemp("realistic"), num_trainval=NUM, num_test=NUM, seed=3)


@pytest.fixture(scope="module")
def records(voc):
    return list(VOCDataset(voc, "trainval")) + list(VOCDataset(voc, "test"))


def test_classes_are_real_objects_from_several_photographs():
    assert len(REALISTIC_CLASSES) >= 10 and REALISTIC_CLASSES == tuple(sorted(REALISTIC_CLASSES))
    assert not set(REALISTIC_CLASSES) & set(VOC_CLASSES)  # never taken for a VOC subset
    assert len({c.photo for c in CLASSES.values()}) >= 10
    for name in REALISTIC_CLASSES:
        for sprite in class_sprites(name):
            h, w = sprite.alpha.shape
            assert sprite.rgb.shape == (h, w, 3) and max(h, w) >= 40, name
            # a cut-out, not its rectangle (except the text block) and not empty
            assert 0.3 < (sprite.alpha >= 0.5).mean() <= 1.0, name
            assert sprite.rgb.std() > 10, name  # real texture, not a flat fill


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = make_realistic_dataset(tmp_path / "a", num_trainval=2, num_test=2, seed=5)
    b = make_realistic_dataset(tmp_path / "b", num_trainval=2, num_test=2, seed=5)
    c = make_realistic_dataset(tmp_path / "c", num_trainval=2, num_test=2, seed=6)
    files_a = file_bytes(a)
    assert len(files_a) == 2 * 4 + 4 and files_a == file_bytes(b)
    files_c = file_bytes(c)
    assert files_c.keys() == files_a.keys()
    assert all(files_a[n] != files_c[n] for n in files_a if n.startswith("JPEGImages"))


def test_images_are_voc_sized_and_annotations_valid(voc, records):
    assert len(records) == 2 * NUM
    for record in records:
        assert load_image(record.path).shape == (375, 500, 3) and (record.width, record.height) == (500, 375)
        assert 1 <= len(record.boxes) <= 5
        x1, y1, x2, y2 = record.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 499).all() and (y2 <= 374).all()
        assert (x2 >= x1).all() and (y2 >= y1).all()
    root = ET.parse(voc / "Annotations" / f"{records[0].image_id}.xml").getroot()
    assert root.findtext("source/database") == "sppnet realistic"
    assert {o.findtext("truncated") for o in root.iter("object")} <= {"0", "1"}


def test_every_class_in_both_splits_sizes_and_hard_cases(voc, records):
    for split in ("trainval", "test"):
        dataset = VOCDataset(voc, split)
        assert dataset.classes == REALISTIC_CLASSES
        labels = np.concatenate([r.labels for r in dataset])
        difficult = np.concatenate([r.difficult for r in dataset])
        assert (np.bincount(labels[~difficult], minlength=len(REALISTIC_CLASSES)) >= 2).all(), split
    boxes = np.concatenate([r.boxes for r in records])
    difficult = np.concatenate([r.difficult for r in records])
    sides = boxes[:, 2:] - boxes[:, :2] + 1
    assert sides.max(axis=1).min() <= 25 and sides.max() >= 180  # ~15 px to about half the image
    assert sides.max() <= 250 + 2
    assert 0.03 <= difficult.mean() <= 0.4
    # tiny visible boxes are difficult, as VOC marks them
    tiny = (sides.max(axis=1) < realistic.DIFFICULT_SIDE) | (sides.min(axis=1) < realistic.DIFFICULT_THIN)
    assert tiny.any() and difficult[tiny].all()
    truncated = []
    for record in records:
        root = ET.parse(voc / "Annotations" / f"{record.image_id}.xml").getroot()
        truncated += [o.findtext("truncated") == "1" for o in root.iter("object")]
    assert 0.03 <= np.mean(truncated) <= 0.4


def test_max_extent_bounds_objects_and_defaults_to_half_the_longer_side():
    small = [draw_realistic_image(np.random.Generator(np.random.PCG64([4, 0, i])), (500, 375),
                                  REALISTIC_CLASSES[i % len(REALISTIC_CLASSES)], SMALL_OBJECTS_MAX_EXTENT)[1]
             for i in range(40)]
    sides = np.array([max(o.box[2] - o.box[0], o.box[3] - o.box[1]) + 1 for objects in small for o in objects])
    # a box's longer side is the extent drawn, up to a pixel of rounding at each end
    assert sides.max() <= SMALL_OBJECTS_MAX_EXTENT + 2 and sides.max() >= 0.8 * SMALL_OBJECTS_MAX_EXTENT
    assert sides.min() <= 25
    # the default is half the image's longer side (the set's images before max_extent existed were
    # checked byte for byte against this code when it came: the draws are consumed as before)
    rng_a, rng_b = (np.random.Generator(np.random.PCG64([4, 0, 7])) for _ in range(2))
    image_a, objects_a = draw_realistic_image(rng_a, (500, 375), "cup")
    image_b, objects_b = draw_realistic_image(rng_b, (500, 375), "cup", 250)
    assert np.array_equal(image_a, image_b) and objects_a == objects_b


def test_max_extent_is_recorded_and_checked(tmp_path):
    import json
    voc = make_realistic_dataset(tmp_path / "s", num_trainval=1, num_test=1, seed=0, max_extent=96)
    assert json.loads((voc.parent / realistic.PARAMS_FILE).read_text())["max_extent"] == 96
    other = make_realistic_dataset(tmp_path / "s", num_trainval=1, num_test=1, seed=0)  # another set: remade
    assert json.loads((other.parent / realistic.PARAMS_FILE).read_text())["max_extent"] == 250
    for bad in (79, 251):
        with pytest.raises(ValueError, match=rf"max_extent {bad} is outside \[80, 250\]"):
            make_realistic_dataset(tmp_path / "bad", num_trainval=1, num_test=1, max_extent=bad)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="max_extent 30 is outside"):
        draw_realistic_image(np.random.Generator(np.random.PCG64(0)), (500, 375), "cup", 30)


def test_occlusion_hides_part_of_earlier_objects_and_counts_for_difficult():
    hidden = occluded_difficult = 0
    for index in range(40):
        rng = np.random.Generator(np.random.PCG64([11, 0, index]))
        pasted = []
        original_place = realistic._place

        def spy(*args, **kwargs):
            result = original_place(*args, **kwargs)
            if result is not None:
                pasted.append(result[1])
            return result

        realistic._place = spy
        try:
            _, objects = draw_realistic_image(rng, (500, 375), REALISTIC_CLASSES[index % len(REALISTIC_CLASSES)])
        finally:
            realistic._place = original_place
        visible = realistic.visible_coverage([p.alpha for p in pasted])
        for obj, p, v in zip(objects, pasted, visible):
            inside = p.alpha.sum()
            if v.sum() < 0.9 * inside:  # something pasted later covers a tenth of it
                hidden += 1
                occluded_difficult += obj.difficult and not obj.truncated and v.sum() < 0.5 * p.area
            # the box is the visible part's
            assert obj.box == realistic.mask_box(v >= 0.5)
    assert hidden >= 5 and occluded_difficult >= 1


def test_background_is_never_the_photograph_of_an_object(monkeypatch):
    chosen = []
    original = realistic._background
    monkeypatch.setattr(realistic, "_background", lambda rng, region, size: chosen.append(region[0])
                        or original(rng, region, size))
    for index in range(30):
        rng = np.random.Generator(np.random.PCG64([2, 1, index]))
        _, objects = draw_realistic_image(rng, (500, 375), "rocket" if index % 2 else "pagoda")
        assert chosen[-1] not in {CLASSES[o.name].photo for o in objects}


def test_missing_scikit_image_is_one_clear_line(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name == "skimage" or name.startswith("skimage."):
            raise ImportError("No module named 'skimage'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    with pytest.raises(MissingDependencyError, match=r"^the realistic data set needs scikit-image: pip install") as err:
        make_realistic_dataset(tmp_path, num_trainval=1, num_test=1)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "VOC2007").exists()
    code = main(["ablation", "--dataset", "realistic", "--out", str(tmp_path), "--doc", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs scikit-image: pip install 'sppnet[realistic]'" in err
