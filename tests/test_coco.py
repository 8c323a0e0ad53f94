"""COCO files: data sets read from them, detections written to them, pycocotools evaluation (`--metric coco`)."""
import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from detection.evaluation.coco_eval import coco_evaluate, format_coco_table
from detection.data.coco import COCODataset, detections_to_coco, read_coco_detections, voc_to_coco
from detection.data.demo import DEMO_CLASSES, make_demo_dataset
from detection.data.load import load_dataset
from detection.data.records import DatasetError
from detection.core.boxes import from_coco_boxes, to_coco_boxes
from detection.core.detections import ClassDetections, Detections, by_class
from detection.data.devkit import read_devkit_results, write_devkit_results
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
    result = coco_evaluate(dataset, by_class(ground_truth_detections(dataset), 2))
    for name in ("AP", "AP50", "AP75", "mAP"):
        assert result[name] == pytest.approx(1.0), name
    assert result["ap"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert result["AP_small"] == pytest.approx(1.0)  # the 20 x 26 dog
    # a detection on a difficult box is ignored, not a false positive, as in the VOC devkit
    assert coco_evaluate(dataset, by_class(ground_truth_detections(dataset, with_difficult=True), 2))["AP"] == pytest.approx(1.0)
    # no detections at all: 0, and the table still prints
    empty = coco_evaluate(dataset, by_class({}, 2))
    assert empty["AP"] == 0.0 and "AP75" in format_coco_table(empty)
    with pytest.raises(ValueError, match="not in split"):
        coco_evaluate(dataset, [ClassDetections(np.array(["999999"]), np.ones(1), np.zeros((1, 4))),
                                ClassDetections.empty()])


def test_a_shifted_box_lowers_ap75_before_ap50(tmp_path):
    dataset = write_voc(tmp_path, {"000001": [("cat", 1, 1, 100, 100, 0)]})
    shifted = {"000001": Detections(np.array([[15.0, 0, 114, 99]]), np.array([1.0]), np.array([0]))}  # IoU 0.74
    result = coco_evaluate(dataset, by_class(shifted, 2))
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
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["pr_all.png", "pr_cat.png", "pr_dog.png"]
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


# ---------------------------------------------------------------- COCO-format data sets

# objects of 320x240 images whose boxes need the checks: one partly outside (clipped), one wholly outside
# (skipped), one of zero width in COCO terms (skipped)
EDGE_OBJECTS = {
    "000004": [("dog", 300, 200, 340, 250, 0), ("cat", 5, 5, 40, 40, 0)],
    "000005": [("cat", 330, 10, 350, 20, 0), ("dog", 10, 10, 9, 30, 0)],
}


def write_coco(path, objects, size=(320, 240), categories=((1, "cat"), (2, "dog"))):
    """A COCO annotation file for the images of :func:`write_voc`, written from the objects' VOC
    coordinates on its own: x = xmin - 1, w = xmax - xmin + 1; difficult -> iscrowd. Image ids
    start at 101 and annotation ids at 1001, so that nothing relies on them being indices."""
    ids = {name: i for i, name in categories}
    images, annotations = [], []
    for number, (image_id, objs) in enumerate(objects.items()):
        images.append({"id": 101 + number, "file_name": f"{image_id}.jpg", "width": size[0], "height": size[1]})
        for name, x1, y1, x2, y2, difficult in objs:
            annotations.append({"id": 1001 + len(annotations), "image_id": 101 + number, "category_id": ids[name],
                                "bbox": [x1 - 1, y1 - 1, x2 - x1 + 1, y2 - y1 + 1],
                                "area": (x2 - x1 + 1) * (y2 - y1 + 1), "iscrowd": difficult})
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path


def assert_same_records(a, b):
    assert a.classes == b.classes and len(a) == len(b)
    assert (a.clipped_boxes, len(a.skipped_boxes), a.ignored_objects) == \
        (b.clipped_boxes, len(b.skipped_boxes), b.ignored_objects)
    for ra, rb in zip(a, b):
        assert (ra.image_id, ra.path, ra.width, ra.height) == (rb.image_id, rb.path, rb.width, rb.height)
        for field in ("boxes", "labels", "difficult"):
            np.testing.assert_array_equal(getattr(ra, field), getattr(rb, field), err_msg=field)
            assert getattr(ra, field).dtype == getattr(rb, field).dtype, field


def test_the_same_boxes_as_voc_and_as_coco_give_identical_records(tmp_path):
    objects = {**OBJECTS, **EDGE_OBJECTS}
    voc = write_voc(tmp_path, objects)
    coco = load_dataset(write_coco(tmp_path / "test.json", objects), images=tmp_path / "JPEGImages")
    assert isinstance(coco, COCODataset) and coco.split == "test"
    assert_same_records(voc, coco)  # VOC's classes given, COCO's from its categories
    assert_same_records(voc, load_dataset(tmp_path / "test.json", "test", images=tmp_path / "JPEGImages",
                                          classes=CLASSES))
    assert coco.clipped_boxes == 1 and len(coco.skipped_boxes) == 2
    with pytest.raises(DatasetError, match="which split"):
        load_dataset(tmp_path)
    assert "image 105 '000005.jpg': annotation 1010 'dog' (bbox [9, 9, 0, 21]) has no pixels" in coco.skipped_boxes[1]


def test_generated_demo_images_as_voc_and_as_coco_give_identical_records(tmp_path):
    import xml.etree.ElementTree as ET

    root = make_demo_dataset(tmp_path / "data", num_trainval=3, num_test=3, seed=3, image_size=(160, 120))
    for split in ("trainval", "test"):
        voc = VOCDataset(root, split, classes=DEMO_CLASSES)
        objects = {}
        for record in voc:
            xml = ET.parse(root / "Annotations" / f"{record.image_id}.xml").getroot()
            objects[record.image_id] = [(o.findtext("name"), *(int(o.find("bndbox").findtext(k)) for k in
                                                               ("xmin", "ymin", "xmax", "ymax")),
                                         int(o.findtext("difficult"))) for o in xml.iter("object")]
        coco_file = write_coco(tmp_path / f"{split}.json", objects, size=(160, 120),
                               categories=tuple((7 + 3 * k, name) for k, name in enumerate(DEMO_CLASSES)))
        assert_same_records(voc, COCODataset(coco_file, root / "JPEGImages"))


def test_category_ids_in_increasing_order_are_the_class_indices_and_crowds_are_difficult(tmp_path):
    write_voc(tmp_path, OBJECTS)
    coco = COCODataset(write_coco(tmp_path / "a.json", OBJECTS, categories=((9, "dog"), (4, "cat"))),
                       tmp_path / "JPEGImages")
    assert coco.classes == ("cat", "dog")  # id 4 before id 9, whatever the file's order
    assert [coco.classes[k] for k in coco[1].labels] == ["dog", "cat", "cat"]
    assert coco[1].difficult.tolist() == [False, False, True]
    # an explicit class list orders by name; objects of other categories are ignored
    only_dog = COCODataset(tmp_path / "a.json", tmp_path / "JPEGImages", classes=("dog",))
    assert [len(r.boxes) for r in only_dog] == [1, 1, 0] and only_dog.ignored_objects == 4


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][1].update(category_id=5), r"annotations\[1\] \(id 1002\): category_id 5 is not among"),
    (lambda d: d["annotations"][0].update(image_id=7), r"annotations\[0\] \(id 1001\): image_id 7 is not among"),
    (lambda d: d["annotations"][2].update(bbox=[1, 2, 3]), r"annotations\[2\] \(id 1003\): bbox \[1, 2, 3\] is not"),
    (lambda d: d["annotations"][2].pop("bbox"), r"annotations\[2\] is not an object with image_id, category_id, bbox"),
    (lambda d: d["images"][1].update(file_name="x/000001.png"), r"images '000001.jpg' and 'x/000001.png' have the "
                                                                 r"same name '000001'"),
    (lambda d: d["images"][0].update(width=640), r"image 101 '000001.jpg': the annotation is for a 640x240 image, "
                                                 r"but .*000001.jpg is 320x240"),
    (lambda d: d["categories"].append({"id": 3, "name": "Cat"}), r"class 'Cat' is spelt differently"),
    (lambda d: d["images"][0].update(width=0), r"image 101 '000001.jpg': image size 0x240 is not positive"),
    (lambda d: d["images"][1].update(id=101), r"image ids must be unique"),
    (lambda d: d["categories"].append({"id": 2, "name": "bird"}), r"category ids and names must be unique"),
    (lambda d: d.update(images=[], annotations=[]), r"split 'a' has no images"),
    (lambda d: d.pop("images"), r"not a COCO annotation file"),
])
def test_coco_errors_name_the_file_and_the_entry(tmp_path, change, message):
    write_voc(tmp_path, OBJECTS)
    data = json.loads(write_coco(tmp_path / "a.json", OBJECTS).read_text())
    change(data)
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=message) as err:
        COCODataset(tmp_path / "a.json", tmp_path / "JPEGImages", classes=("cat", "dog"))
    assert str(err.value).startswith(str(tmp_path / "a.json")) and "\n" not in str(err.value)


def test_coco_data_on_the_command_line_needs_its_image_folder(tmp_path, capsys):
    write_voc(tmp_path, OBJECTS)
    write_coco(tmp_path / "a.json", OBJECTS)
    assert main(["eval", "--data", str(tmp_path / "a.json"), "--results", str(tmp_path)]) == 2
    assert "needs the folder of its images (--images DIR)" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path), "--images", str(tmp_path), "--results", str(tmp_path)]) == 2
    assert "--images goes with a COCO annotation file" in capsys.readouterr().err
    (tmp_path / "broken.json").write_text("{")
    assert main(["eval", "--data", str(tmp_path / "broken.json"), "--images", str(tmp_path), "--results",
                 str(tmp_path)]) == 2
    assert "broken.json: not a JSON file" in capsys.readouterr().err


def test_eval_against_coco_ground_truth_is_pycocotools_on_the_file(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    write_voc(tmp_path, OBJECTS)
    # non-integer boxes and areas that are not the box's (a segmentation's): the file's own values count
    data = json.loads(write_coco(tmp_path / "gt.json", OBJECTS, categories=((9, "dog"), (4, "cat"))).read_text())
    for ann in data["annotations"]:
        ann["bbox"][0] += 0.25
        ann["area"] = ann["bbox"][2] * ann["bbox"][3] * 0.7
    (tmp_path / "gt.json").write_text(json.dumps(data))
    dataset = COCODataset(tmp_path / "gt.json", tmp_path / "JPEGImages", classes=("dog", "cat"))  # not id order
    rng = np.random.default_rng(0)
    detections = {}
    for record in dataset:
        boxes = record.boxes + rng.normal(0, 4, record.boxes.shape)
        detections[record.image_id] = Detections(boxes, rng.random(len(boxes)), record.labels)
    out = tmp_path / "results"
    write_devkit_results(out, dataset.split, dataset.classes, detections)
    assert main(["eval", "--data", str(tmp_path / "gt.json"), "--images", str(tmp_path / "JPEGImages"),
                 "--classes", "dog,cat", "--results", str(out), "--metric", "coco",
                 "--json", str(tmp_path / "m.json")]) == 0
    ours = json.loads((tmp_path / "m.json").read_text())
    # pycocotools directly on the file and the detections as read back from the result files
    results = []
    for k, class_results in enumerate(read_devkit_results(out, dataset.split, dataset.classes)):
        for image_id, score, box in zip(class_results.image_ids, class_results.scores,
                                        to_coco_boxes(class_results.boxes)):
            results.append({"image_id": 101 + int(image_id) - 1, "category_id": (9, 4)[k], "bbox": box.tolist(),
                            "score": float(score)})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(tmp_path / "gt.json"))
        evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert ours["AP"] == pytest.approx(evaluator.stats[0], abs=1e-12) and 0 < ours["AP"] < 1
    assert ours["AP_small"] == (None if evaluator.stats[3] < 0 else pytest.approx(evaluator.stats[3], abs=1e-12))
    # per class: COCOeval's class axis is in category id order (cat 4, dog 9)
    for axis, name in enumerate(("cat", "dog")):
        values = evaluator.eval["precision"][:, :, axis, 0, -1]
        assert ours["ap"][name] == pytest.approx(values[values > -1].mean(), abs=1e-12), name


@pytest.mark.slow
def test_training_and_testing_on_voc_or_coco_gives_the_same_map(tmp_path):
    root = make_demo_dataset(tmp_path / "data", num_trainval=6, num_test=6, seed=1, image_size=(160, 120))
    small = ["--max-proposals", "60", "--proposal-width", "160", "--scales", "128", "--feature-layer", "pool5",
             "--no-bbox-reg", "--device", "cpu", "--workers", "1", "--quiet"]
    for split in ("trainval", "test"):  # the COCO files, from the VOC records through the writer under test
        (tmp_path / f"{split}.json").write_text(json.dumps(voc_to_coco(VOCDataset(root, split))))
    images = ["--images", str(root / "JPEGImages")]
    voc_args = {"train": ["--data", str(root)], "test": ["--data", str(root)]}
    coco_args = {"train": ["--data", str(tmp_path / "trainval.json"), *images],
                 "test": ["--data", str(tmp_path / "test.json"), *images]}
    metrics = {}
    for name, args in (("voc", voc_args), ("coco", coco_args)):
        assert main(["train", *args["train"], "--work-dir", str(tmp_path / name), *small]) == 0
        assert main(["test", *args["test"], "--model", str(tmp_path / name / "model.pt"),
                     "--out", str(tmp_path / name / "test"), "--device", "cpu", "--workers", "1", "--quiet"]) == 0
        metrics[name] = json.loads((tmp_path / name / "test" / "metrics.json").read_text())
    assert metrics["voc"] == metrics["coco"] and metrics["voc"]["mAP"] > 0


def test_a_coco_detections_file_with_other_categories_is_a_one_line_error(tmp_path, capsys):
    dataset = write_voc(tmp_path / "voc")
    images = [{"id": 1, "file_name": "000001.jpg", "width": 320, "height": 240}]
    coco = detections_to_coco(images, [Detections(np.zeros((1, 4)), np.ones(1), np.array([0]))], ("dinosaur",))
    (tmp_path / "detections.json").write_text(json.dumps(coco))
    assert main(["eval", "--data", str(dataset.root), "--split", "test", "--classes", "cat,dog",
                 "--results", str(tmp_path / "detections.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "detections.json: categories ['dinosaur']" in err
