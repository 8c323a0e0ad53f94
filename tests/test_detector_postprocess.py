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


def test_windows_on_the_same_cells_are_featured_once_and_detected_as_each_window():
    """Detector.features pools and runs the head once per distinct (scale, cells); scores and
    detections are those of featuring every window."""
    from detection.detector import head_activations, svm_margins
    from features.head import FCHead
    from features.spp import spp_output_dim
    from svm.bbox_regression import BoxRegressor

    torch.manual_seed(0)
    backbone = build_backbone("zf5", pretrained=False)
    config = SPPConfig().replace(features={"backbone": "zf5", "scales": (100, 160)},
                                 svm={"feature_layer": "ftfc7+pool5"}, test={"score_threshold": 0.0})
    dim = spp_output_dim(backbone.channels, config.features.pyramid_levels)
    rng = np.random.default_rng(5)
    regressor = BoxRegressor(ridge_lambda=1.0).fit(rng.normal(size=(60, dim)), rng.normal(scale=0.1, size=(60, 4)),
                                                   rng.integers(0, K, 60), num_classes=K)
    det = Detector(config, tuple("abc"), backbone, rng.normal(0, 1, (K, dim + 16)), rng.normal(0, 0.1, K), 1.0,
                   regressor, device="cpu", head=FCHead(dim, 16, None), bbox_feature_scale=0.01)
    image = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
    x0, y0 = rng.integers(0, 80, 200), rng.integers(0, 50, 200)
    boxes = np.column_stack([x0, y0, x0 + rng.integers(10, 50, 200), y0 + rng.integers(10, 50, 200)]).astype(float)
    boxes = np.concatenate([boxes, boxes[:60] + rng.integers(0, 2, (60, 4))])  # near copies, often the same cells
    maps = det.compute_maps(image)
    features = det.features(maps, boxes, image.shape[:2])
    assert len(features) == len(boxes) and len(features.pool5) < len(boxes)
    every_pool5 = det.extractor.pool(maps, boxes, image.shape[:2])
    with torch.inference_mode():
        every = WindowFeatures(every_pool5, head_activations(every_pool5, det.head, "ftfc7+pool5"), "ftfc7+pool5")
    expected = svm_margins(every.pool5, every.head, every.layer, det.svm_weights, det.svm_bias, det.feature_scale)
    scores = det.score(features)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-5)
    got, want = (det.postprocess(boxes, scores, f, image.shape[:2]) for f in (features, every))
    assert len(got) > 10
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
    np.testing.assert_array_equal(got.labels, want.labels)


def test_the_model_file_keeps_the_exact_head_and_its_test_time_form_is_chosen_at_load(tmp_path):
    from features.head import FCHead, truncated_head
    from features.spp import spp_output_dim

    torch.manual_seed(1)
    backbone = build_backbone("zf5", pretrained=False)
    config = SPPConfig().replace(features={"backbone": "zf5", "scales": (100,)}, svm={"feature_layer": "ftfc7"},
                                 bbox={"enabled": False})
    dim = spp_output_dim(backbone.channels, config.features.pyramid_levels)
    rng = np.random.default_rng(6)
    exact = Detector(config, tuple("abc"), backbone, rng.normal(0, 1, (K, 32)), np.zeros(K), 1.0, device="cpu",
                     head=FCHead(dim, 32, None))
    assert exact.detection_head is exact.head
    exact.save(tmp_path / "model.pt")
    fast = Detector.load(tmp_path / "model.pt", device="cpu", overrides={"test.fc6_svd_rank": 6})
    assert [layer.weight.shape[0] for layer in fast.detection_head.fc6] == [6, 32]
    assert fast.replace(feature_scale=2.0).detection_head is fast.detection_head  # one SVD per model
    assert all(torch.equal(v, exact.head.state_dict()[k]) for k, v in fast.state()["head"].items())
    image = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 60, 50], [30, 20, 120, 90], [10, 40, 50, 99]], dtype=float)
    maps = exact.compute_maps(image)
    features = fast.features(maps, boxes, image.shape[:2])
    with torch.inference_mode():
        expected = truncated_head(exact.head, 6, 0).features(features.pool5, "fc7")
        assert torch.allclose(features.head, expected, atol=1e-5)
        exact_head = exact.features(maps, boxes, image.shape[:2]).head
        assert not torch.allclose(features.head, exact_head, atol=1e-3)
    # the head in bfloat16 (float32 out): close to float32's, not equal to it
    bf16 = Detector.load(tmp_path / "model.pt", device="cpu", overrides={"test.head_precision": "bf16"})
    head = bf16.features(maps, boxes, image.shape[:2]).head
    assert head.dtype == torch.float32 and not torch.equal(head, exact_head)
    torch.testing.assert_close(head, exact_head, rtol=0.05, atol=0.02 * float(exact_head.abs().max()))


def test_a_softmax_scoring_detector_has_variants():
    from features.head import FCHead
    from features.spp import spp_output_dim

    backbone = build_backbone("zf5", pretrained=False)
    config = SPPConfig().replace(features={"backbone": "zf5", "scales": (100,)}, svm={"feature_layer": "ftfc7"},
                                 bbox={"enabled": False}, test={"scoring": "softmax"})
    head = FCHead(spp_output_dim(backbone.channels, config.features.pyramid_levels), 16, K)
    det = Detector(config, tuple("abc"), backbone, None, None, None, device="cpu", head=head)
    variant = det.replace(features={"scales": (120,)})
    assert variant.svm_weights is None and variant.config.features.scales == (120,)
    image = np.random.default_rng(7).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 60, 50], [30, 20, 120, 90]], dtype=float)
    scores = variant.score(variant.features(variant.compute_maps(image), boxes, image.shape[:2]))
    assert scores.shape == (2, K) and bool(((scores > 0) & (scores < 1)).all())
