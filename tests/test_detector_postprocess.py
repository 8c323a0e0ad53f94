"""Test-time post-processing (recipe §9): top 100 boxes per class per image, as spp_test.m / rcnn_test.m."""
import numpy as np
import pytest
import torch

from detection.core.config import SPPConfig
from detection.detector import Detector, WindowFeatures, top_per_class
from features.backbones import build_backbone

K = 3


def top_per_class_reference(scores, labels, max_per_class, max_per_image):
    kept = []
    for j in np.unique(labels):
        rows = [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)) if labels[i] == j]
        kept += rows[:max_per_class] if max_per_class else rows
    kept.sort(key=lambda i: (-scores[i], i))
    return np.array(kept[:max_per_image] if max_per_image else kept, dtype=np.int64)


@pytest.mark.parametrize("max_per_class, max_per_image", [(3, 0), (1, 0), (3, 5), (0, 4), (0, 0), (50, 2)])
def test_top_per_class_matches_reference(max_per_class, max_per_image):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, 40).astype(np.float32)  # many ties: the earlier detection wins
    labels = rng.integers(0, 4, 40)
    got = top_per_class(scores, labels, max_per_class, max_per_image)
    np.testing.assert_array_equal(got, top_per_class_reference(scores, labels, max_per_class, max_per_image))
    assert len(top_per_class(scores[:0], labels[:0], max_per_class, max_per_image)) == 0


def grid_windows(n):
    """(n, 4) disjoint 10x10 boxes: NMS keeps every one of them."""
    i = np.arange(n)
    x, y = 20 * (i % 20), 20 * (i // 20)
    return np.column_stack([x, y, x + 9, y + 9]).astype(np.float64)


def detector(**test):
    config = SPPConfig().replace(svm={"feature_layer": "pool5"}, bbox={"enabled": False}, test=test)
    backbone = build_backbone("zf5", pretrained=False)
    return Detector(config, tuple("abc"), backbone, np.zeros((K, 8)), np.zeros(K), 1.0, device="cpu")


def test_postprocess_keeps_100_per_class_not_100_per_image():
    n = 150
    boxes = grid_windows(n)
    scores = torch.from_numpy(np.random.default_rng(1).uniform(0, 1, (n, K)).astype(np.float32))
    features = WindowFeatures(torch.zeros(n, 8), None, "pool5")
    dets = detector().postprocess(boxes, scores, features, (400, 400))
    # the default follows the official code: 100 of each class, 300 in all
    assert np.bincount(dets.labels, minlength=K).tolist() == [100] * K
    for j in range(K):
        np.testing.assert_allclose(np.sort(dets.scores[dets.labels == j]), np.sort(scores[:, j].numpy())[-100:])
    # the earlier behaviour stays available: the 100 best over all classes
    old = detector(max_per_class=0, max_per_image=100).postprocess(boxes, scores, features, (400, 400))
    assert len(old) == 100
    np.testing.assert_allclose(old.scores, np.sort(scores.numpy().ravel())[::-1][:100])


def regressing_detector(scale):
    """A pool5 detector (8-d features) whose box regressors are fitted on random data."""
    from svm.bbox_regression import BoxRegressor

    rng = np.random.default_rng(2)
    regressor = BoxRegressor(ridge_lambda=1.0).fit(rng.normal(size=(60, 8)), rng.normal(size=(60, 4)),
                                                   rng.integers(0, K, 60), num_classes=K)
    config = SPPConfig().replace(svm={"feature_layer": "pool5"})
    return Detector(config, tuple("abc"), build_backbone("zf5", pretrained=False), np.zeros((K, 8)), np.zeros(K),
                    1.0, regressor, device="cpu", bbox_feature_scale=scale)


def test_box_deltas_match_each_class_regressor_on_the_scaled_pool5():
    det = regressing_detector(scale=3.0)
    pool5 = torch.from_numpy(np.random.default_rng(3).normal(size=(10, 8)).astype(np.float32))
    windows = np.array([4, 0, 4, 9, 4, 2])  # a window detected as several classes
    labels = np.array([0, 1, 2, 2, 1, 0])
    expected = det.regressor.predict(3.0 * pool5.numpy()[windows].astype(np.float64), labels)
    np.testing.assert_allclose(det.box_deltas(pool5, windows, labels), expected, rtol=1e-5, atol=1e-5)
    assert det.box_deltas(pool5, windows[:0], labels[:0]).shape == (0, 4)


def test_postprocess_moves_each_box_by_its_class_regressor():
    from detection.core.boxes import apply_bbox_deltas, clip_boxes

    det = regressing_detector(scale=0.5)
    n = 6
    boxes = grid_windows(n) * 4  # 40x40 boxes 80 px apart: no two overlap, before or after the small moves
    pool5 = torch.from_numpy(np.random.default_rng(4).normal(scale=0.05, size=(n, 8)).astype(np.float32))
    scores = torch.full((n, K), -5.0)
    scores[[0, 1, 3, 5], [2, 0, 0, 1]] = torch.tensor([2.0, 1.0, 0.5, 0.0])
    dets = det.postprocess(boxes, scores, WindowFeatures(pool5, None, "pool5"), (400, 400))
    windows, labels = np.array([0, 1, 3, 5]), np.array([2, 0, 0, 1])  # best first
    deltas = det.regressor.predict(0.5 * pool5.numpy()[windows].astype(np.float64), labels)
    np.testing.assert_allclose(dets.boxes, clip_boxes(apply_bbox_deltas(boxes[windows], deltas), 400, 400), atol=1e-3)
    np.testing.assert_array_equal(dets.labels, labels)
