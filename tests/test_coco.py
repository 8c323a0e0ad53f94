"""COCO files and pycocotools evaluation of a VOC-format set (`sppnet eval --metric coco`)."""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from detection.evaluation.coco_eval import coco_evaluate, format_coco_table
from detection.data.coco import detections_to_coco, read_coco_detections, voc_to_coco
from detection.core.boxes import from_coco_boxes, to_coco_boxes
from detection.core.detections import Detections
from detection.data.devkit import write_devkit_results
from detection.data.voc import VOCDataset
from tools.cli import main

CLASSES = ("cat", "dog")

# image id -> [(class, xmin, ymin, xmax, ymax (1-based, as in the XML), difficult)]
OBJECTS = {
    "000001": [("cat", 11, 21, 60, 90, 0), ("dog", 101, 11, 200, 150, 0)],
    "000002": [("dog", 5, 5, 24, 30, 0), ("cat", 150, 100, 300, 230, 0), ("cat", 40, 40, 70, 70, 1)],
    "000003": [("cat", 30, 30, 130, 120, 0)],
}


def write_voc(root, objects=OBJECTS, size=(320, 240)):
    """A VOC-format set, split ``test``, with the given objects and blank images."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objs in objects.items():
        xml = "".join(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                      f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
                      for name, x1, y1, x2, y2, difficult in objs)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{xml}</annotation>")
        Image.new("RGB", size).save(root / "JPEGImages" / f"{image_id}.jpg")
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(objects) + "\n")
    return VOCDataset(root, "test", classes=CLASSES)


def ground_truth_detections(dataset, with_difficult=False) -> dict[str, Detections]:
    """Each image's (non-difficult) GT boxes as detections with distinct scores."""
    detections = {}
    for record in dataset:
        keep = np.ones(len(record.labels), bool) if with_difficult else ~record.difficult
        detections[record.image_id] = Detections(record.boxes[keep], np.linspace(0.9, 0.5, keep.sum()),
                                                 record.labels[keep])
    return detections


def test_inclusive_boxes_to_coco_and_back():
    boxes = np.array([[10, 20, 10, 20], [0, 0, 99, 49]], dtype=float)
    np.testing.assert_array_equal(to_coco_boxes(boxes), [[10, 20, 1, 1], [0, 0, 100, 50]])
    np.testing.assert_array_equal(from_coco_boxes(to_coco_boxes(boxes)), boxes)


def test_detections_file_loads_in_pycocotools_and_loadres():
    from pycocotools.coco import COCO

    images = [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
              {"id": 2, "file_name": "b.jpg", "width": 60, "height": 40}]
    dets = [Detections(np.array([[0, 0, 9, 19], [5, 5, 50, 60]], float), np.array([0.9, 0.2]), np.array([1, 0])),
            Detections.empty()]
    data = detections_to_coco(images, dets, CLASSES)
    assert data["categories"] == [{"id": 1, "name": "cat", "supercategory": "object"},
                                  {"id": 2, "name": "dog", "supercategory": "object"}]
    assert data["annotations"][0] == {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 20.0],
                                      "area": 200.0, "score": 0.9, "iscrowd": 0}
    coco = COCO()
    coco.dataset = json.loads(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        results = coco.loadRes(json.loads(json.dumps(data["annotations"])))
    assert coco.getImgIds() == [1, 2] and len(results.getAnnIds()) == 2
    with pytest.raises(ValueError, match="b.jpg"):
        detections_to_coco(images, [dets[0], Detections(np.zeros((1, 4)), np.ones(1), np.array([5]))], CLASSES)


def test_voc_ground_truth_becomes_coco_with_difficult_as_crowd(tmp_path):
    gt = voc_to_coco(write_voc(tmp_path))
    assert [image["id"] for image in gt["images"]] == [1, 2, 3]
    assert gt["images"][0] == {"id": 1, "file_name": "000001.jpg", "width": 320, "height": 240}
    first = gt["annotations"][0]
    # XML 11..60 (1-based inclusive) -> 0-based 10..59 -> x 10, w 50
    assert first["bbox"] == [10.0, 20.0, 50.0, 70.0] and first["area"] == 3500.0 and first["category_id"] == 1
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 0, 0, 1, 0]


def test_detections_equal_to_the_ground_truth_score_ap_one(tmp_path):
    dataset = write_voc(tmp_path)
    result = coco_evaluate(dataset, ground_truth_detections(dataset))
    for name in ("AP", "AP50", "AP75", "mAP"):
        assert result[name] == pytest.approx(1.0), name
    assert result["ap"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert result["AP_small"] == pytest.approx(1.0)  # the 20 x 26 dog
    # a detection on a difficult box is ignored, not a false positive, as in the VOC devkit
    assert coco_evaluate(dataset, ground_truth_detections(dataset, with_difficult=True))["AP"] == pytest.approx(1.0)
    # no detections at all: 0, and the table still prints
    empty = coco_evaluate(dataset, {})
    assert empty["AP"] == 0.0 and "AP75" in format_coco_table(empty)
    with pytest.raises(ValueError, match="not in split"):
        coco_evaluate(dataset, {"999999": Detections.empty()})


def test_a_shifted_box_lowers_ap75_before_ap50(tmp_path):
    dataset = write_voc(tmp_path, {"000001": [("cat", 1, 1, 100, 100, 0)]})
    shifted = {"000001": Detections(np.array([[15.0, 0, 114, 99]]), np.array([1.0]), np.array([0]))}  # IoU 0.74
    result = coco_evaluate(dataset, shifted)
    assert result["AP50"] == pytest.approx(1.0) and result["AP75"] == 0.0
    assert result["ap"]["dog"] is None and result["AP_small"] is None  # nothing to measure them on


def test_eval_command_coco_metric_plots_and_coco_input(tmp_path, capsys):
    dataset = write_voc(tmp_path / "voc")
    detections = ground_truth_detections(dataset)
    write_devkit_results(tmp_path / "results", "test", CLASSES, detections)
    args = ["eval", "--data", str(tmp_path / "voc"), "--split", "test", "--classes", "cat,dog"]
    assert main([*args, "--results", str(tmp_path / "results"), "--metric", "coco",
                 "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "plots")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert "AP_medium" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["pr_all.png", "pr_cat.png", "pr_curves.csv", "pr_dog.png"]
    # the COCO file of `sppnet detect` (absolute file names, an image outside the split) is read too
    images = [{"id": i, "file_name": str(record.path), "width": 320, "height": 240}
              for i, record in enumerate(dataset, start=1)]
    images.append({"id": 9, "file_name": "/elsewhere/not_in_split.jpg", "width": 10, "height": 10})
    coco = detections_to_coco(images, [detections[r.image_id] for r in dataset] + [Detections.empty()], CLASSES)
    (tmp_path / "detections.json").write_text(json.dumps(coco))
    read = read_coco_detections(tmp_path / "detections.json", CLASSES)
    np.testing.assert_allclose(read["000002"].boxes, detections["000002"].boxes)
    assert main([*args, "--results", str(tmp_path / "detections.json"), "--metric", "voc07",
                 "--json", str(tmp_path / "v.json")]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["mAP"] == pytest.approx(1.0)
