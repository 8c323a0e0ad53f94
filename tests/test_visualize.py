"""Detections drawn on images (and the Result object around them), and the matplotlib charts."""
import csv
import sys

import numpy as np
import pytest
from PIL import Image

from detection.core.detections import Detections
from detection.results import Result
from detection.visualize import (
    PALETTE, PlotError, class_colour, draw_detections, save_finetune_curves, save_pr_curves, text_colour,
)


def test_class_colours_are_distinct_stable_and_never_run_out():
    colours = [class_colour(k) for k in range(60)]
    assert len(set(colours)) == 60
    assert colours[:len(PALETTE)] == list(PALETTE) and class_colour(3) == colours[3]
    assert all(0 <= c <= 255 for colour in colours for c in colour)
    assert text_colour((255, 225, 25)) == (0, 0, 0) and text_colour((0, 0, 128)) == (255, 255, 255)


def test_draw_detections_boxes_tags_and_input_untouched():
    image = np.full((120, 160, 3), 128, np.uint8)
    dets = Detections(np.array([[20.0, 30, 80, 100], [0, 0, 50, 40]]), np.array([0.9, 0.3]), np.array([0, 3]))
    drawn = draw_detections(image, dets, ("circle", "cross", "square", "star"))
    assert (image == 128).all() and drawn.shape == image.shape and drawn.dtype == np.uint8
    assert tuple(drawn[70, 80]) == class_colour(0)  # right edge of the first box
    assert tuple(drawn[100, 50]) == class_colour(0)  # bottom edge
    assert (drawn[60, 40] == 128).all()  # inside the box, nothing drawn
    # the first box's tag sits above it; the second box touches the top, so its tag goes inside
    assert (drawn[14:28, 22:60] != 128).any()
    assert (drawn[3:14, 3:30] != 128).any()


def test_drawn_images_keep_their_format(tmp_path):
    image = np.zeros((40, 50, 3), np.uint8)
    result = Result(image, Detections(np.array([[5.0, 5, 30, 30]]), np.array([1.5]), np.array([0])), ("thing",))
    for name in ("a.jpg", "b.png", "c.webp", "d.bmp", "e.tiff", "sub/f.JPEG"):
        assert result.save(tmp_path / name) == tmp_path / name
        with Image.open(tmp_path / name) as written:
            assert written.size == (50, 40)


def test_result_plots_saves_and_converts_to_coco(tmp_path):
    from pycocotools.coco import COCO

    image = np.full((60, 80, 3), 200, np.uint8)
    dets = Detections(np.array([[10.0, 20, 39, 49], [0, 0, 9, 9]]), np.array([0.4, -1.0]), np.array([1, 0]),
                      np.array([0.8, 0.3]))
    result = Result(image, dets, ("cat", "dog"), "/photos/a.jpg")
    assert len(result) == 2 and result.names == ["dog", "cat"]
    assert np.array_equal(result.plot(), draw_detections(image, dets, ("cat", "dog")))
    assert (image == 200).all()
    coco = result.to_coco(image_id=7)
    assert coco["images"] == [{"id": 7, "file_name": "/photos/a.jpg", "width": 80, "height": 60}]
    first = coco["annotations"][0]
    assert first["bbox"] == [10.0, 20.0, 30.0, 30.0] and first["category_id"] == 2 and first["image_id"] == 7
    assert first["score"] == 0.8 and first["margin"] == 0.4  # calibrated: the probability is the score
    ground_truth = COCO()
    ground_truth.dataset = {"images": coco["images"], "categories": coco["categories"], "annotations": []}
    ground_truth.createIndex()
    assert len(ground_truth.loadRes(coco["annotations"]).getAnnIds()) == 2


def test_detector_predict_returns_a_result(tmp_path):
    import torch

    from detection.core.config import SPPConfig
    from detection.detector import Detector
    from features.backbones import build_backbone
    from features.spp import spp_output_dim

    config = SPPConfig().replace(features={"scales": (64,)}, svm={"feature_layer": "pool5"}, bbox={"enabled": False},
                                 test={"score_threshold": -1e9})
    backbone = build_backbone("zf5", pretrained=False)
    dim = spp_output_dim(backbone.channels, config.features.pyramid_levels)
    detector = Detector(config, ("cat", "dog"), backbone, np.random.default_rng(0).normal(0, 0.01, (2, dim)),
                        np.zeros(2), 1.0, device="cpu")
    image = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    proposals = np.array([[0, 0, 40, 40], [30, 10, 90, 60.0]])
    result = detector.predict(tmp_path / "a.png", proposals)
    assert result.path == str(tmp_path / "a.png") and np.array_equal(result.image, image)
    assert result.classes == ("cat", "dog") and len(result) == 4  # 2 windows × 2 classes, nothing suppressed
    with torch.no_grad():
        direct = detector.detect(image, proposals)
    assert np.array_equal(result.detections.scores, direct.scores)
    assert result.save(tmp_path / "drawn.jpg").is_file()
    assert len(result.to_coco()["annotations"]) == 4


def test_drawn_tags_show_the_probability_when_there_is_one():
    image = np.zeros((100, 200, 3), np.uint8)
    boxes, labels = np.array([[10.0, 40, 150, 90]]), np.array([0])
    with_margin = draw_detections(image, Detections(boxes, np.array([-1.25]), labels), ("a",))
    with_probability = draw_detections(image, Detections(boxes, np.array([-1.25]), labels, np.array([0.75])), ("a",))
    assert not np.array_equal(with_margin, with_probability)
    assert np.array_equal(with_probability, draw_detections(image, Detections(boxes, np.array([0.75]), labels), ("a",)))


def near(chart: np.ndarray, colour) -> int:
    return int((np.abs(chart.astype(int) - np.array(colour)).sum(axis=2) < 30).sum())


def test_pr_charts_per_class_together_and_as_csv(tmp_path):
    recall = np.array([0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 1.0, 2 / 3, 0.75])
    curves = {"cat": (0.8, recall, precision), "dog": (0.0, np.zeros(0), np.zeros(0)),
              "bird/fish": (0.0, np.full(2, np.nan), np.zeros(2))}
    paths = save_pr_curves(curves, tmp_path, "voc07")
    assert [p.name for p in paths] == ["pr_cat.png", "pr_dog.png", "pr_bird_fish.png", "pr_all.png", "pr_curves.csv"]
    chart = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert chart.shape == (540, 720, 3)
    assert near(chart, class_colour(0)) > 200  # the curve is there, in the class's colour
    assert near(np.asarray(Image.open(paths[1]).convert("RGB")), class_colour(0)) == 0
    with open(paths[-1], newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [r["class"] for r in rows] == ["cat"] * 4 + ["bird/fish"] * 2
    assert [float(r["precision"]) for r in rows[:4]] == pytest.approx(precision, abs=1e-6)


def test_finetune_curves_and_csv(tmp_path):
    history = [{"iteration": 10 * i, "lr": 1e-3, "loss": 2.0 / i, "accuracy": 0.5 + 0.04 * i,
                "fg_accuracy": 0.2 + 0.07 * i} for i in range(1, 11)]
    paths = save_finetune_curves(history, tmp_path)
    assert [p.name for p in paths] == ["finetune.csv", "finetune.png"]
    chart = np.asarray(Image.open(paths[1]).convert("RGB"))
    assert chart.shape == (400, 960, 3) and near(chart, PALETTE[3]) > 50
    lines = paths[0].read_text().splitlines()
    assert lines[0] == "iteration,lr,loss,accuracy,fg_accuracy" and len(lines) == 11
    assert lines[1].split(",")[:3] == ["10", "0.001", "2.0"]
    assert save_finetune_curves([], tmp_path / "none") == []
    assert [p.name for p in save_finetune_curves(history, tmp_path / "csv", plot=False)] == ["finetune.csv"]


def test_charts_without_matplotlib_are_a_one_line_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    with pytest.raises(PlotError, match=r"pip install 'sppnet\[plots\]'") as error:
        save_pr_curves({"cat": (0.5, np.array([0.5]), np.array([1.0]))}, tmp_path, "voc07")
    assert "\n" not in str(error.value) and not list(tmp_path.iterdir())
    with pytest.raises(PlotError):
        save_finetune_curves([{"iteration": 1, "lr": 0.1, "loss": 1, "accuracy": 0, "fg_accuracy": 0}], tmp_path)
    assert save_finetune_curves([{"iteration": 1, "lr": 0.1, "loss": 1, "accuracy": 0, "fg_accuracy": 0}],
                                tmp_path, plot=False)[0].name == "finetune.csv"


@pytest.mark.parametrize("size", [(12, 9), (2000, 1500)])
def test_text_and_lines_scale_with_the_image(size):
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    dets = Detections(np.array([[0.0, 0, width - 1, height - 1]]), np.array([0.5]), np.array([1]))
    drawn = draw_detections(image, dets, ("a", "b"))
    assert drawn.shape == image.shape and drawn.any()
