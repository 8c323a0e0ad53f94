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
def test_training_stores_a_calibration_and_detection_reports_probabilities(tmp_path):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=4, num_test=2, seed=2, image_size=(160, 120))
    dataset = VOCDataset(voc, "trainval")
    detector = Trainer(TINY, tmp_path / "work", device="cpu", progress=False, log=lambda _: None).train(dataset)
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

    # a model file written before calibration existed: margins only, no error
    state = torch.load(tmp_path / "work" / "model.pt", weights_only=True)
    del state["calibration"]
    torch.save(state, tmp_path / "old.pt")
    old = Detector.load(tmp_path / "old.pt", device="cpu")
    assert old.calibration is None
    old_dets = old(image)
    assert old_dets.probabilities is None and old_dets.scores == pytest.approx(dets.scores)
