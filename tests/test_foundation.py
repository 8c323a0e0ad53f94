"""Config, cache, VOC reading and image loading."""
import json

import numpy as np
import pytest
from PIL import Image

from detection.core.cache import Cache, safe_key
from detection.core.config import FIVE_SCALES, SPPConfig, fingerprint
from detection.core.images import ImageError, as_rgb_array, load_image
from detection.data.records import DatasetError
from detection.data.voc import VOC_CLASSES, VOCDataset, resolve_voc_root


def test_config_round_trip_and_paper_defaults():
    cfg = SPPConfig().replace(features={"scales": FIVE_SCALES}, bbox={"ridge_lambda": 4000.0})
    again = SPPConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    d = SPPConfig()
    assert d.features.pyramid_levels == (1, 2, 3, 6) and d.features.scales == (688,)
    assert (d.svm.C, d.svm.positive_weight, d.svm.bias_multiplier) == (0.001, 2.0, 10.0)
    assert (d.test.nms_iou, d.test.score_threshold, d.test.max_per_image) == (0.3, -1.5, 100)
    assert fingerprint(d.proposals) == fingerprint(SPPConfig().proposals)
    assert fingerprint(d.proposals) != fingerprint(d.replace(proposals={"max_proposals": 10}).proposals)


def test_cache_put_get_atomic_and_keys(tmp_path):
    cache = Cache(tmp_path)
    assert cache.get("s", "f", "img1") is None
    cache.put("s", "f", "img1", {"a": np.arange(5)})
    np.testing.assert_array_equal(cache.get("s", "f", "img1")["a"], np.arange(5))
    assert not list(cache.directory("s", "f").glob("*.tmp"))
    # keys that are paths still map to one safe file name each
    assert safe_key("a/b/c.jpg") != safe_key("a_b/c.jpg") and "/" not in safe_key("a/b/c.jpg")
    cache.put("s", "f", "/abs/path/x.jpg", {"a": np.ones(2)})
    assert cache.has("s", "f", "/abs/path/x.jpg")
    # a torn file is treated as missing and removed
    cache.path("s", "f", "img1").write_bytes(b"garbage")
    assert cache.get("s", "f", "img1") is None and not cache.has("s", "f", "img1")


def write_voc(root, objects_by_image, split="trainval"):
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in objects_by_image.items():
        Image.new("RGB", (60, 40)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, d, b in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>60</width><height>40</height><depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(objects_by_image) + "\n")


def test_voc_reader_converts_one_based_and_keeps_difficult(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    write_voc(voc, {"000001": [("dog", 0, (1, 1, 10, 20)), ("cat", 1, (0, 5, 30, 39))], "000002": []})
    ds = VOCDataset(tmp_path / "VOCdevkit", "trainval")  # a devkit parent resolves to VOC2007
    assert ds.root == voc and ds.classes == VOC_CLASSES and len(ds) == 2
    rec = ds[0]
    np.testing.assert_array_equal(rec.boxes, [[0, 0, 9, 19], [0, 4, 29, 38]])  # xmin=0 does not underflow
    assert [ds.classes[i] for i in rec.labels] == ["dog", "cat"]
    assert rec.difficult.tolist() == [False, True]
    assert ds[1].boxes.shape == (0, 4) and (rec.width, rec.height) == (60, 40)


def test_voc_reader_class_list_rules(tmp_path):
    write_voc(tmp_path, {"a": [("zebra", 0, (1, 1, 5, 5))], "b": [("apple", 0, (1, 1, 5, 5))]})
    assert VOCDataset(tmp_path, "trainval").classes == ("apple", "zebra")
    only = VOCDataset(tmp_path, "trainval", classes=("zebra",))
    assert only.classes == ("zebra",) and len(only[1].boxes) == 0


def test_voc_reader_errors_name_the_file(tmp_path):
    with pytest.raises(DatasetError, match="not a VOC directory"):
        resolve_voc_root(tmp_path)
    write_voc(tmp_path, {"a": []})
    with pytest.raises(DatasetError, match="test.txt"):
        VOCDataset(tmp_path, "test")
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DatasetError, match="a.xml"):
        VOCDataset(tmp_path, "trainval")


def test_load_image_modes_and_errors(tmp_path):
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((8, 6), 100, np.uint8)).save(gray)
    assert load_image(gray).shape == (8, 6, 3)
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((8, 6), 60000, np.uint16)).save(deep)
    assert load_image(deep).max() == 255
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(rgba)
    assert load_image(rgba)[0, 0].tolist() == [10, 20, 30]
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (5, 4), (0, 0, 0, 0)).save(cmyk)
    assert load_image(cmyk)[0, 0].tolist() == [255, 255, 255]
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (20, 10)).save(rotated, exif=exif)
    assert load_image(rotated).shape == (20, 10, 3)
    empty = tmp_path / "e.jpg"
    empty.write_bytes(b"")
    for path, reason in [(empty, "empty"), (tmp_path / "none.jpg", "no such file"),
                         (gray, "more than --max-pixels")]:
        with pytest.raises(ImageError, match=reason) as err:
            load_image(path, max_pixels=10)
        assert str(path) in str(err.value)
    corrupt = tmp_path / "x.jpg"
    corrupt.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(corrupt)
    truncated = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ImageError):
        load_image(truncated)
    with pytest.raises(ImageError, match="smaller than"):
        load_image(gray, min_side=32)


def test_as_rgb_array_accepts_arrays_and_pil():
    assert as_rgb_array(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    assert as_rgb_array(Image.new("L", (5, 4))).shape == (4, 5, 3)
    with pytest.raises(ImageError, match="uint8"):
        as_rgb_array(np.zeros((4, 5, 3), np.float32))
