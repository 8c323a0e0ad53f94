"""Per-class ridge regression from window features to box deltas (recipe §8).

Follows R-CNN's ``rcnn_train_bbox_regressor.m`` / ``rcnn_predict_bbox_regressor.m``:

- training windows: max IoU with a GT box strictly above ``min_overlap`` (0.6); the target is that
  GT box and the class is its class (the first GT box on ties, like MATLAB's ``max``);
- a constant-1 bias column is appended to the features and regularised with the weights:
  ``min |A beta - Y|^2 + lambda |beta|^2`` with ``lambda`` unscaled by the number of samples;
- targets are centred on their class mean before the fit and the mean is added back at prediction.

R-CNN also whitens the centred targets (``Y T`` with ``T = (S + 0.001 I)^(-1/2)``) and un-whitens
the predictions (``T_inv``). Ridge regression with one design matrix and one lambda for all four
outputs is linear in the targets, so ``beta(Y T) T_inv = beta(Y)``: the whitening cancels exactly
and is not done here.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import cho_factor, cho_solve
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.validation import check_is_fitted

from detection.core.boxes import bbox_regression_targets, max_overlaps

_GRAM_BLOCK_ROWS = 4096  # rows converted to float64 at a time when accumulating A'A


def regression_training_set(proposals: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray,
                            min_overlap: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's box-regression examples.

    proposals (N, 4), gt_boxes (G, 4), gt_labels (G,) -> indices (M,) of the windows whose best IoU
    with a GT box is > ``min_overlap``, their targets (M, 4) (dx, dy, dw, dh) towards that GT box
    and labels (M,), the class of that GT box. R-CNN's windows include the GT boxes themselves
    (target 0), so pass them among the proposals to match it.
    """
    proposals = np.asarray(proposals, dtype=np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    best_iou, best_gt = max_overlaps(proposals, gt_boxes)
    chosen = np.flatnonzero(best_iou > min_overlap)
    targets = bbox_regression_targets(proposals[chosen], gt_boxes[best_gt[chosen]])
    return chosen, targets, gt_labels[best_gt[chosen]]


def _ridge(X: np.ndarray, Y: np.ndarray, ridge_lambda: float) -> np.ndarray:
    """Solve ``min |A B - Y|^2 + lambda |B|^2`` with A = [X, 1]: X (n, D), Y (n, T) -> B (D + 1, T).

    With fewer samples than columns the equivalent n x n system ``B = A' (A A' + lambda I)^-1 Y``
    is solved instead of the (D + 1) x (D + 1) one; both by Cholesky, as R-CNN.
    """
    n, dim = X.shape
    if n <= dim:
        A = np.hstack([X.astype(np.float64), np.ones((n, 1))])
        gram = A @ A.T
        gram[np.diag_indices_from(gram)] += ridge_lambda
        return A.T @ cho_solve(cho_factor(gram), Y)
    gram = np.zeros((dim + 1, dim + 1))
    rhs = np.zeros((dim + 1, Y.shape[1]))
    # Blockwise so that only a block of rows, never all of X, is held in float64.
    for start in range(0, n, _GRAM_BLOCK_ROWS):
        block = X[start:start + _GRAM_BLOCK_ROWS]
        A = np.hstack([block.astype(np.float64), np.ones((len(block), 1))])
        gram += A.T @ A
        rhs += A.T @ Y[start:start + _GRAM_BLOCK_ROWS]
    gram[np.diag_indices_from(gram)] += ridge_lambda
    return cho_solve(cho_factor(gram), rhs)


class BoxRegressor(RegressorMixin, BaseEstimator):
    """One ridge regressor per class from features (D,) to deltas (dx, dy, dw, dh).

    Parameters
    ----------
    ridge_lambda : ridge penalty on the weights and the bias (R-CNN 1000; official SPP code 4000).

    Attributes
    ----------
    coef_ : (K, D, 4) float64 weights per class.
    intercept_ : (K, 4) float64, the fitted bias plus the class's mean target.
    n_samples_ : (K,) int64 training windows per class; classes with none have zero coef_ and
        intercept_, so their predicted deltas are 0 (boxes unchanged).
    """

    def __init__(self, ridge_lambda: float = 1000.0):
        self.ridge_lambda = ridge_lambda

    def fit(self, X: np.ndarray, targets: np.ndarray, labels: np.ndarray,
            num_classes: int | None = None) -> BoxRegressor:
        """X (N, D) features, targets (N, 4) deltas, labels (N,) classes in 0..K-1.

        K is ``num_classes``, or ``labels.max() + 1`` when None.
        """
        X = np.asarray(X)
        targets = np.asarray(targets, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if X.ndim != 2 or not len(X) == len(targets) == len(labels):
            raise ValueError(f"X (N, D), targets (N, 4), labels (N,) must agree; "
                             f"got {X.shape}, {targets.shape}, {labels.shape}")
        num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"labels must be class indices in 0..{num_classes - 1}")
        dim = X.shape[1]
        self.coef_ = np.zeros((num_classes, dim, 4))
        self.intercept_ = np.zeros((num_classes, 4))
        self.n_samples_ = np.bincount(labels, minlength=num_classes).astype(np.int64)
        for j in np.flatnonzero(self.n_samples_):
            rows = np.flatnonzero(labels == j)
            mean = targets[rows].mean(axis=0)
            beta = _ridge(X[rows], targets[rows] - mean, self.ridge_lambda)
            self.coef_[j] = beta[:dim]
            self.intercept_[j] = beta[dim] + mean
        return self

    def predict(self, X: np.ndarray, labels: np.ndarray | int) -> np.ndarray:
        """X (N, D), labels (N,) (or one class for all) -> (N, 4) deltas, each by its class's regressor."""
        check_is_fitted(self, "coef_")
        X = np.asarray(X)
        labels = np.broadcast_to(np.asarray(labels, dtype=np.int64), (len(X),))
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.coef_)):
            raise ValueError(f"labels must be class indices in 0..{len(self.coef_) - 1}")
        deltas = np.zeros((len(X), 4))
        for j in np.unique(labels):
            rows = np.flatnonzero(labels == j)
            deltas[rows] = X[rows] @ self.coef_[j] + self.intercept_[j]
        return deltas

    def score(self, X: np.ndarray, targets: np.ndarray, labels: np.ndarray) -> float:
        """R² of :meth:`predict` ``(X, labels)`` against targets (N, 4), averaged over the four outputs."""
        return float(r2_score(targets, self.predict(X, labels)))

    def to_state(self) -> dict:
        """The fitted regressor as tensors and plain values, loadable with ``torch.load(weights_only=True)``."""
        check_is_fitted(self, "coef_")
        return {"ridge_lambda": float(self.ridge_lambda), "coef": torch.from_numpy(self.coef_),
                "intercept": torch.from_numpy(self.intercept_), "n_samples": torch.from_numpy(self.n_samples_)}

    @classmethod
    def from_state(cls, state: dict) -> BoxRegressor:
        """The inverse of :meth:`to_state`."""
        regressor = cls(ridge_lambda=state["ridge_lambda"])
        regressor.coef_ = state["coef"].numpy().astype(np.float64)
        regressor.intercept_ = state["intercept"].numpy().astype(np.float64)
        regressor.n_samples_ = state["n_samples"].numpy().astype(np.int64)
        return regressor
