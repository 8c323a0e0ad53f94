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
    features = WindowFeatures(torch.zeros(n, 8), torch.zeros(n, 8))
    dets = detector().postprocess(boxes, scores, features, (400, 400))
    # the default follows the official code: 100 of each class, 300 in all
    assert np.bincount(dets.labels, minlength=K).tolist() == [100] * K
    for j in range(K):
        np.testing.assert_allclose(np.sort(dets.scores[dets.labels == j]), np.sort(scores[:, j].numpy())[-100:])
    # the earlier behaviour stays available: the 100 best over all classes
    old = detector(max_per_class=0, max_per_image=100).postprocess(boxes, scores, features, (400, 400))
    assert len(old) == 100
    np.testing.assert_allclose(old.scores, np.sort(scores.numpy().ravel())[::-1][:100])
