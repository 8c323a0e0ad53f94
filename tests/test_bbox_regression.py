"""Box-regression training windows and per-class ridge regressors (recipe §8)."""
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from detection.core.boxes import apply_bbox_deltas, bbox_regression_targets, box_iou
from detection.core.config import BBoxConfig
from detection.data.records import ImageRecord
from detection.training.windows import training_windows
from svm.bbox_regression import BoxRegressor, regression_training_set


def rcnn_reference(X, Y, lam):
    """R-CNN's rcnn_train/predict_bbox_regressor, literally: bias column, centred and whitened
    targets, Cholesky on (A'A + lambda I), un-whitened predictions. Returns a predict function."""
    A = np.hstack([X, np.ones((len(X), 1))])
    mu = Y.mean(0)
    Yc = Y - mu
    d, V = np.linalg.eigh(Yc.T @ Yc / len(Yc))
    T = V @ np.diag(1 / np.sqrt(d + 0.001)) @ V.T
    T_inv = V @ np.diag(np.sqrt(d + 0.001)) @ V.T
    R = np.linalg.cholesky(A.T @ A + lam * np.eye(A.shape[1]))
    beta = np.linalg.solve(R.T, np.linalg.solve(R, A.T @ (Yc @ T)))
    return lambda Xt: (Xt @ beta[:-1] + beta[-1]) @ T_inv + mu


# -- training windows ----------------------------------------------------------------------------

def test_regression_training_set_picks_strictly_above_threshold_and_best_gt():
    gt = np.array([[0, 0, 9, 9], [100, 100, 119, 119]], dtype=float)
    labels = np.array([4, 7])
    proposals = np.array([
        [0, 0, 9, 9],          # the GT box itself: IoU 1
        [0, 0, 9, 15],         # 100 / 160 = 0.625 with GT 0
        [0, 0, 9, 14],         # 100 / 150 = 0.667 with GT 0
        [0, 0, 14, 9],         # 100 / 150 = 0.667 ... same, kept too
        [100, 100, 119, 132],  # 400 / 660 = 0.606 with GT 1
        [0, 0, 9, 5],          # inside GT 0: 60 / 100 = 0.6 exactly, not kept (R-CNN's strict '>')
        [50, 50, 60, 60],      # overlaps nothing
    ], dtype=float)
    iou = box_iou(proposals, gt)
    assert iou[5, 0] == 0.6
    chosen, targets, chosen_labels = regression_training_set(proposals, gt, labels, min_overlap=0.6)
    expected = np.flatnonzero(iou.max(1) > 0.6)
    np.testing.assert_array_equal(chosen, expected)
    np.testing.assert_array_equal(chosen, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(chosen_labels, [4, 4, 4, 4, 7])
    best = iou.argmax(1)[chosen]
    np.testing.assert_allclose(targets, bbox_regression_targets(proposals[chosen], gt[best]))
    np.testing.assert_allclose(targets[0], 0.0, atol=1e-12)
    # the targets lead each window onto its GT box
    np.testing.assert_allclose(apply_bbox_deltas(proposals[chosen], targets), gt[best], atol=1e-9)


def test_regression_training_set_without_gt_or_proposals_is_empty():
    proposals = np.array([[0, 0, 9, 9]], dtype=float)
    chosen, targets, labels = regression_training_set(proposals, np.zeros((0, 4)), np.zeros(0), 0.6)
    assert chosen.shape == (0,) and targets.shape == (0, 4) and labels.shape == (0,)
    chosen, targets, labels = regression_training_set(np.zeros((0, 4)), proposals, np.array([1]), 0.6)
    assert chosen.shape == (0,) and targets.shape == (0, 4) and labels.shape == (0,)


def test_regression_training_set_on_many_random_boxes_matches_a_loop():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (400, 2))
    proposals = np.hstack([xy, xy + rng.uniform(5, 80, (400, 2))])
    gt = proposals[rng.choice(400, 6, replace=False)] + rng.normal(scale=3, size=(6, 4))
    labels = rng.integers(0, 20, 6)
    chosen, targets, chosen_labels = regression_training_set(proposals, gt, labels, min_overlap=0.5)
    iou = box_iou(proposals, gt)
    expected = [i for i in range(400) if iou[i].max() > 0.5]
    assert chosen.tolist() == expected and len(expected) > 6
    for k, i in enumerate(chosen):
        g = int(np.argmax(iou[i]))
        assert chosen_labels[k] == labels[g]
        np.testing.assert_allclose(targets[k], bbox_regression_targets(proposals[i:i + 1], gt[g:g + 1])[0])


# -- the regressor --------------------------------------------------------------------------------

def test_box_regressor_recovers_a_linear_map_per_class():
    rng = np.random.default_rng(1)
    dim, n = 8, 300
    X = rng.normal(size=(2 * n, dim)).astype(np.float32)
    labels = np.repeat([0, 2], n)
    W = rng.normal(size=(3, dim, 4))
    c = rng.normal(size=(3, 4))
    targets = np.einsum("nd,ndt->nt", X, W[labels]) + c[labels]
    model = BoxRegressor(ridge_lambda=1e-6).fit(X, targets, labels, num_classes=4)
    assert model.coef_.shape == (4, dim, 4) and model.intercept_.shape == (4, 4)
    np.testing.assert_array_equal(model.n_samples_, [n, 0, n, 0])
    for j in (0, 2):
        np.testing.assert_allclose(model.coef_[j], W[j], atol=1e-5)
        np.testing.assert_allclose(model.intercept_[j], c[j], atol=1e-5)
    np.testing.assert_allclose(model.predict(X, labels), targets, atol=1e-4)
    assert model.score(X, targets, labels) == pytest.approx(1.0)
    # classes 1 and 3 had no training windows: boxes are left as they are
    assert np.all(model.predict(X[:5], np.array([1, 3, 1, 3, 1])) == 0)
    np.testing.assert_array_equal(model.predict(X[:5], 2), model.predict(X[:5], np.full(5, 2)))
    with pytest.raises(ValueError):
        model.predict(X[:2], np.array([0, 4]))


@pytest.mark.parametrize("n", [40, 200])  # fewer and more samples than feature dimensions
def test_box_regressor_matches_rcnn_whitened_formulation(n):
    rng = np.random.default_rng(2)
    dim = 120
    X = rng.normal(size=(n, dim)) * 3
    Y = rng.normal(size=(n, 4)) @ rng.normal(size=(4, 4)) + X[:, :4] * 0.1 + [0.1, -0.2, 0.3, 0.05]
    model = BoxRegressor(ridge_lambda=1000.0).fit(X, Y, np.zeros(n, int))
    X_test = rng.normal(size=(30, dim)) * 3
    np.testing.assert_allclose(model.predict(X_test, np.zeros(30, int)), rcnn_reference(X, Y, 1000.0)(X_test),
                               rtol=1e-7, atol=1e-9)


def test_box_regressor_round_trips_through_a_weights_only_model_file():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 6)).astype(np.float32)
    labels = rng.integers(0, 3, 50)
    model = BoxRegressor(ridge_lambda=10.0).fit(X, rng.normal(size=(50, 4)), labels, num_classes=5)
    buffer = io.BytesIO()
    torch.save({"regressor": model.to_state()}, buffer)
    buffer.seek(0)
    again = BoxRegressor.from_state(torch.load(buffer, weights_only=True)["regressor"])
    assert again.ridge_lambda == 10.0
    np.testing.assert_array_equal(again.coef_, model.coef_)
    np.testing.assert_array_equal(again.n_samples_, model.n_samples_)
    np.testing.assert_array_equal(again.predict(X, labels), model.predict(X, labels))


def test_difficult_objects_are_regression_targets_as_in_rcnn():
    """R-CNN's roidb has every object, difficult ones included; ``use_difficult=False`` drops them."""
    gt = np.array([[0, 0, 39, 39], [100, 100, 139, 139]], dtype=float)
    record = ImageRecord("a", Path("a.jpg"), 200, 200, gt, np.array([0, 1]), np.array([False, True]))
    proposals = np.array([[1, 1, 40, 40], [101, 101, 140, 140], [60, 60, 80, 80]], dtype=float)
    windows = training_windows(record, proposals, num_classes=2)
    assert BBoxConfig().use_difficult
    boxes, labels = windows.ground_truth(BBoxConfig().use_difficult)
    chosen, _, chosen_labels = regression_training_set(windows.boxes, boxes, labels)
    # both GT boxes and both proposals on them, the difficult object's included
    assert chosen.tolist() == [0, 1, 2, 3] and chosen_labels.tolist() == [0, 1, 0, 1]
    boxes, labels = windows.ground_truth(use_difficult=False)
    chosen, _, chosen_labels = regression_training_set(windows.boxes, boxes, labels)
    assert chosen.tolist() == [0, 2] and chosen_labels.tolist() == [0, 0]
