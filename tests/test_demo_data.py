"""The generated demo dataset: deterministic, valid VOC for detection.voc, reused when unchanged."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from detection.data.demo import DEMO_CLASSES, PARAMS_FILE, make_demo_dataset
from detection.core.images import load_image
from detection.data.voc import VOC_CLASSES, VOCDataset


def file_bytes(voc):
    return {str(p.relative_to(voc)): p.read_bytes() for p in sorted(voc.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The dataset exactly as ``sppnet demo`` makes it (default parameters)."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"))


def test_class_names_are_sorted_and_not_voc():
    assert DEMO_CLASSES == tuple(sorted(DEMO_CLASSES)) and 4 <= len(DEMO_CLASSES) <= 5
    assert not set(DEMO_CLASSES) & set(VOC_CLASSES)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    params = dict(num_trainval=4, num_test=3, seed=7)
    a = make_demo_dataset(tmp_path / "a", **params)
    b = make_demo_dataset(tmp_path / "b", **params)
    c = make_demo_dataset(tmp_path / "c", **{**params, "seed": 8})
    files_a = file_bytes(a)
    assert a.name == "VOC2007" and len(files_a) == 2 * 7 + 4  # xml + jpg per image, 4 split files
    assert files_a == file_bytes(b)
    files_c = file_bytes(c)
    assert files_c.keys() == files_a.keys()
    for name in files_a:
        if not name.startswith("ImageSets"):
            assert files_a[name] != files_c[name], name


def test_reader_loads_both_splits(demo):
    trainval, test = VOCDataset(demo.parent, "trainval"), VOCDataset(demo, "test")
    assert trainval.root == demo and trainval.classes == test.classes == DEMO_CLASSES
    assert (len(trainval), len(test)) == (40, 40)
    assert {r.image_id for r in trainval}.isdisjoint(r.image_id for r in test)
    halves = [[r.image_id for r in VOCDataset(demo, split)] for split in ("train", "val")]
    assert halves[0] + halves[1] == [r.image_id for r in trainval] and len(halves[0]) == 20
    for record in list(trainval) + list(test):
        assert load_image(record.path).shape == (240, 320, 3) and (record.width, record.height) == (320, 240)
        assert 1 <= len(record.boxes) <= 4
        x1, y1, x2, y2 = record.boxes.T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 319).all() and (y2 <= 239).all()
        assert (x2 > x1).all() and (y2 > y1).all()


def test_every_class_in_both_splits_and_some_difficult(demo):
    for split in ("trainval", "test"):
        dataset = VOCDataset(demo, split)
        labels = np.concatenate([r.labels for r in dataset])
        difficult = np.concatenate([r.difficult for r in dataset])
        # enough non-difficult examples of every class to train and to score
        assert (np.bincount(labels[~difficult], minlength=len(DEMO_CLASSES)) >= 8).all(), split
        assert 1 <= difficult.sum() <= 0.15 * len(difficult), split
        sizes = np.concatenate([r.boxes[:, 2:] - r.boxes[:, :2] + 1 for r in dataset]).max(axis=1)
        assert sizes[~difficult].min() >= 20 and sizes.max() <= 150


def test_files_are_one_based_voc(demo):
    record = VOCDataset(demo, "trainval")[0]
    root = ET.parse(demo / "Annotations" / f"{record.image_id}.xml").getroot()
    assert root.findtext("filename") == f"{record.image_id}.jpg"
    assert root.findtext("size/depth") == "3"
    objects = root.findall("object")
    assert len(objects) == len(record.boxes)
    for obj, box in zip(objects, record.boxes):
        written = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
        assert written == (box + 1).tolist()
        assert obj.findtext("truncated") in ("0", "1") and obj.findtext("pose") == "Unspecified"


def test_reuse_does_not_rewrite_and_new_parameters_regenerate(tmp_path):
    voc = make_demo_dataset(tmp_path, num_trainval=3, num_test=2)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert make_demo_dataset(tmp_path, num_trainval=3, num_test=2) == voc
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == mtimes
    make_demo_dataset(tmp_path, num_trainval=2, num_test=2)
    assert json.loads((tmp_path / PARAMS_FILE).read_text())["num_trainval"] == 2
    assert len(list((voc / "JPEGImages").iterdir())) == 4  # no stale images from the larger set
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["VOC2007"]


def test_refuses_to_overwrite_a_dataset_it_did_not_make(tmp_path):
    (tmp_path / "VOC2007" / "Annotations").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="VOC2007"):
        make_demo_dataset(tmp_path, num_trainval=1, num_test=1)
    assert list((tmp_path / "VOC2007").iterdir()) == [tmp_path / "VOC2007" / "Annotations"]
