"""Calibrated probabilities: Platt scaling per class, stored in model.pt, shown next to the margins."""
import json

import numpy as np
import pytest
import torch

from detection.core.config import SPPConfig
from detection.core.detections import Detections
from detection.data.coco import coco_annotations
from detection.data.demo import make_demo_dataset
from detection.data.voc import VOCDataset
from detection.detector import Detector
from detection.evaluation.calibration import format_reliability, labelled_probabilities, reliability
from detection.runs.batch import BatchError, DetectionFilter, prediction_record, record_detections
from detection.training.trainer import Trainer
from svm.calibration import PlattScaling, fit_platt

CLASSES = ("circle", "square", "star")


def logistic_sample(a: float, b: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Margins ~ N(-1, 1) and labels drawn with P(1 | m) = 1 / (1 + exp(a·m + b))."""
    rng = np.random.default_rng(seed)
    margins = rng.normal(-1.0, 1.0, n)
    labels = rng.random(n) < 1 / (1 + np.exp(a * margins + b))
    return margins, labels


def test_platt_recovers_the_sigmoid_that_made_the_labels():
    margins, labels = logistic_sample(-2.0, 1.0, 20_000, seed=0)
    a, b = fit_platt(margins, labels)
    assert a == pytest.approx(-2.0, abs=0.1) and b == pytest.approx(1.0, abs=0.1)


def test_probabilities_in_0_1_and_increasing_in_the_margin_per_class():
    parts = [logistic_sample(a, b, 3000, seed) for seed, (a, b) in enumerate([(-3.0, 2.0), (-0.5, 3.0), (-1.0, 0.0)])]
    margins = np.concatenate([m for m, _ in parts])
    labels = np.concatenate([y for _, y in parts])
    classes = np.repeat(np.arange(3), 3000)
    platt = PlattScaling().fit(margins, labels, classes, num_classes=3)
    assert (platt.coef_ < 0).all()
    grid = np.linspace(-50, 50, 2001)
    proba = platt.predict_proba(np.repeat(grid[:, None], 3, axis=1))  # (N, K)
    assert proba.shape == (2001, 3) and (proba >= 0).all() and (proba <= 1).all()
    assert (np.diff(proba, axis=0) >= 0).all()  # non-decreasing everywhere, saturating far out
    middle = proba[900:1101]
    assert (np.diff(middle, axis=0) > 0).all()  # strictly increasing where the data are
    # per-detection form: margins (M,) of the classes labels (M,)
    labels_m = np.array([0, 1, 2, 1])
    margins_m = np.array([-1.0, 0.0, 2.0, -3.0])
    assert platt.predict_proba(margins_m, labels_m) == pytest.approx(
        platt.predict_proba(np.repeat(margins_m[:, None], 3, axis=1))[np.arange(4), labels_m])


def test_degenerate_classes_get_a_constant_probability():
    rng = np.random.default_rng(1)
    margins = rng.normal(size=400)
    # class 0: higher margins are *less* often right; class 1: no positives; class 2: only positives
    labels = np.concatenate([margins[:200] < 0, np.zeros(100, bool), np.ones(100, bool)])
    classes = np.repeat([0, 1, 2], [200, 100, 100])
    platt = PlattScaling().fit(margins, labels, classes, num_classes=3)
    assert platt.coef_ == pytest.approx([0.0, 0.0, 0.0])
    proba = platt.predict_proba(np.array([[-5.0] * 3, [5.0] * 3]))
    assert proba[0] == pytest.approx(proba[1])
    assert proba[0, 1] == pytest.approx(1 / 102) and proba[0, 2] == pytest.approx(101 / 102)  # smoothed rates
    with pytest.raises(ValueError, match="class indices"):
        PlattScaling().fit(margins[:2], labels[:2], np.array([0, 3]), num_classes=3)


def test_state_round_trip():
    platt = PlattScaling().fit(*logistic_sample(-1.0, 0.5, 500, seed=3), np.zeros(500, int), num_classes=1)
    again = PlattScaling.from_state(platt.to_state())
    assert again.coef_ == pytest.approx(platt.coef_) and again.intercept_ == pytest.approx(platt.intercept_)


def calibrated_dets() -> Detections:
    return Detections(np.array([[0, 0, 9, 9], [5, 5, 20, 20], [1, 2, 3, 4.0]]), np.array([0.5, -0.2, -1.0]),
                      np.array([0, 1, 2]), np.array([0.9, 0.4, 0.7]))


def test_filter_by_probability_orders_by_probability_and_keeps_every_field():
    kept = DetectionFilter(min_probability=0.5)(calibrated_dets())
    assert kept.scores.tolist() == [0.5, -1.0] and kept.probabilities.tolist() == [0.9, 0.7]
    assert kept.labels.tolist() == [0, 2] and kept.boxes.shape == (2, 4)
    margins_only = calibrated_dets()
    with pytest.raises(BatchError, match="calibrated"):
        DetectionFilter(min_probability=0.5)(Detections(margins_only.boxes, margins_only.scores, margins_only.labels))
    assert len(DetectionFilter(min_probability=0.5)(Detections.empty())) == 0  # nothing to test, nothing to refuse


def test_the_probability_threshold_of_detect():
    from types import SimpleNamespace

    from detection.runs.batch.folder import min_probability

    calibrated = SimpleNamespace(calibration=PlattScaling(), config=SPPConfig().replace(test={"detect_min_probability": 0.6}))
    assert min_probability(None, calibrated) == 0.6 and min_probability(0.0, calibrated) == 0.0
    with pytest.raises(BatchError, match=r"--min-prob: a probability in \[0, 1\], got 1.5"):
        DetectionFilter(min_probability=min_probability(1.5, calibrated))
    margins_only = SimpleNamespace(calibration=None, config=SPPConfig())
    assert min_probability(None, margins_only) is None
    with pytest.raises(BatchError, match="no calibration"):
        min_probability(0.5, margins_only)


def test_jsonl_and_coco_carry_probability_next_to_the_margin():
    dets = calibrated_dets()
    record = json.loads(json.dumps(prediction_record("/a.jpg", (30, 40), dets, CLASSES)))
    assert [d["probability"] for d in record["detections"]] == [0.9, 0.4, 0.7]
    assert [d["score"] for d in record["detections"]] == [0.5, -0.2, -1.0]
    back = record_detections(record, CLASSES)
    assert back.probabilities.tolist() == [0.9, 0.4, 0.7] and back.scores.tolist() == [0.5, -0.2, -1.0]
    annotations = coco_annotations(1, dets)
    assert [a["score"] for a in annotations] == [0.9, 0.4, 0.7] and [a["margin"] for a in annotations] == [
        0.5, -0.2, -1.0]
    plain = Detections(dets.boxes, dets.scores, dets.labels)
    assert "probability" not in prediction_record("/a.jpg", (30, 40), plain, CLASSES)["detections"][0]
    assert record_detections(prediction_record("/a.jpg", (30, 40), plain, CLASSES), CLASSES).probabilities is None
    assert [a["score"] for a in coco_annotations(1, plain)] == [0.5, -0.2, -1.0]


TINY = SPPConfig().replace(
    proposals={"max_proposals": 60, "resize_width": 160},
    features={"scales": (160,)},
    svm={"feature_layer": "pool5", "calibration_windows_per_image": 40},
    bbox={"enabled": False},
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:classes .* have no positives:RuntimeWarning")
@pytest.mark.parametrize("folds", [0, 2])
def test_training_stores_a_calibration_and_detection_reports_probabilities(tmp_path, folds):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=4, num_test=2, seed=2, image_size=(160, 120))
    dataset = VOCDataset(voc, "trainval")
    detector = Trainer(TINY.replace(svm={"calibration_folds": folds}), tmp_path / "work", device="cpu",
                       progress=False, log=lambda _: None).train(dataset)
    log = (tmp_path / "work" / "train.log").read_text()
    assert ("held-out margins of 2 fold models" if folds else "in-sample margins") in log
    assert detector.calibration is not None and (detector.calibration.coef_ <= 0).all()
    loaded = Detector.load(tmp_path / "work" / "model.pt", device="cpu")
    assert loaded.calibration.coef_ == pytest.approx(detector.calibration.coef_)
    image = VOCDataset(voc, "test")[0].path
    dets = loaded(image)
    assert len(dets) and dets.probabilities.shape == dets.scores.shape
    assert ((dets.probabilities >= 0) & (dets.probabilities <= 1)).all()
    for j in np.unique(dets.labels):  # within a class, probability order is margin order
        mine = dets.labels == j
        order = np.argsort(dets.scores[mine])
        assert (np.diff(dets.probabilities[mine][order]) >= 0).all()

    # `sppnet test` of a calibrated model reports how often its probabilities come true
    from detection.core.cache import Cache
    from detection.runs.test import test_model

    metrics = test_model(loaded, VOCDataset(voc, "test", classes=loaded.classes), tmp_path / "test", Cache(tmp_path / "cache"), progress=False)
    calibration = metrics["calibration"]
    assert calibration["count"] == sum(b["count"] for b in calibration["bins"]) > 0
    assert 0 <= calibration["ece"] <= 1
    assert json.loads((tmp_path / "test" / "calibration.json").read_text()) == calibration
    assert "calibration" not in json.loads((tmp_path / "test" / "metrics.json").read_text())  # = `sppnet eval`'s

    # a model file written before calibration existed: margins only, no error
    state = torch.load(tmp_path / "work" / "model.pt", weights_only=True)
    del state["calibration"]
    torch.save(state, tmp_path / "old.pt")
    old = Detector.load(tmp_path / "old.pt", device="cpu")
    assert old.calibration is None
    old_dets = old(image)
    assert old_dets.probabilities is None and old_dets.scores == pytest.approx(dets.scores)


# -- reliability of the probabilities on a split with ground truth ----------------------------------

def test_reliability_bins_counts_means_and_ece():
    p = np.array([0.05, 0.15, 0.95, 0.95, 1.0])
    right = np.array([False, True, True, False, True])
    result = reliability(p, right, bins=10)
    filled = [b for b in result["bins"] if b["count"]]
    assert [(b["low"], b["count"]) for b in filled] == [(0.0, 1), (0.1, 1), (0.9, 3)]  # 1.0 in the last bin
    assert filled[2]["mean_probability"] == pytest.approx(2.9 / 3) and filled[2]["share_right"] == pytest.approx(2 / 3)
    assert result["ece"] == pytest.approx((0.05 + 0.85 + 3 * abs(2.9 / 3 - 2 / 3)) / 5)
    assert result["bins"][5] == {"low": 0.5, "high": 0.6, "count": 0, "mean_probability": None, "share_right": None}
    assert "ECE 0.360 over 5 detections" in format_reliability(result)
    # right 19 of 20 times at p = 0.95, 1 of 20 at p = 0.05: calibrated
    perfect = reliability(np.r_[np.full(20, 0.95), np.full(20, 0.05)], np.r_[np.arange(20) < 19, np.arange(20) < 1])
    assert perfect["ece"] == pytest.approx(0.0)


def slow_right_or_wrong(dataset, detections, iou_threshold=0.5):
    """The devkit's loop, one detection at a time: (probability, right) of every counted detection."""
    def iou(a, b):
        w = min(a[2], b[2]) - max(a[0], b[0]) + 1
        h = min(a[3], b[3]) - max(a[1], b[1]) + 1
        if w <= 0 or h <= 0:
            return 0.0
        inter = w * h
        return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)

    records = {r.image_id: r for r in dataset}
    out = []
    for label in range(len(dataset.classes)):
        dets = [(s, p, image_id, box) for image_id, d in detections.items() if d.probabilities is not None
                for s, p, box, lab in zip(d.scores, d.probabilities, d.boxes, d.labels) if lab == label]
        dets.sort(key=lambda t: -t[0])
        matched = set()
        for _, p, image_id, box in dets:
            record = records[image_id]
            best, best_j = 0.0, -1
            for j, (gt, lab) in enumerate(zip(record.boxes, record.labels)):
                if lab == label and iou(box, gt) > best:
                    best, best_j = iou(box, gt), j
            if best >= iou_threshold and record.difficult[best_j]:
                continue
            hit = best >= iou_threshold and (image_id, best_j) not in matched
            if hit:
                matched.add((image_id, best_j))
            out.append((p, hit))
    return sorted(out)


def test_right_or_wrong_as_the_voc_evaluation_counts_it(tmp_path, write_voc):
    root = write_voc(tmp_path / "voc", {
        "a": [("cat", (11, 11, 30, 30)), ("dog", (41, 5, 60, 40)), ("cat", (35, 30, 50, 45), True)],
        "b": [("dog", (1, 1, 20, 20))],
    })
    dataset = VOCDataset(root, "test", classes=("cat", "dog"))
    rng = np.random.default_rng(3)
    detections = {}
    for image_id, record in zip(("a", "b"), dataset):
        centres = np.repeat(record.boxes, 6, axis=0) + rng.normal(0, 4, (6 * len(record.boxes), 4))
        xs, ys = np.sort(np.clip(centres[:, [0, 2]], 0, 63), axis=1), np.sort(np.clip(centres[:, [1, 3]], 0, 47), axis=1)
        boxes = np.column_stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]])
        labels = rng.integers(0, 2, len(boxes))
        detections[image_id] = Detections(boxes, rng.normal(0, 1, len(boxes)), labels, rng.uniform(0, 1, len(boxes)))
    probabilities, right = labelled_probabilities(dataset, detections)
    expected = slow_right_or_wrong(dataset, detections)
    assert sorted(zip(probabilities.tolist(), right.tolist())) == [(p, bool(r)) for p, r in expected]
    assert right.any() and not right.all()
    margins_only = {k: Detections(d.boxes, d.scores, d.labels) for k, d in detections.items()}
    assert len(labelled_probabilities(dataset, margins_only)[0]) == 0
