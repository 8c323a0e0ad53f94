"""One binary linear SVM solved by liblinear, set up exactly as R-CNN's ``update_model`` (recipe §7).

R-CNN calls ``liblinear_train`` with ``-s 3 -c 0.001 -w1 2 -B 10``: L2-regularised hinge loss
solved in the dual, the positive class's C multiplied by 2, and a constant feature of value 10
appended so that the bias is learned as ``b = 10 * w_bias`` and regularised as ``(b / 10)^2``.
scikit-learn's :class:`~sklearn.svm.LinearSVC` wraps the same liblinear solver; its
``class_weight`` is ``-w1`` and its ``intercept_scaling`` is ``-B``. LinearSVC copies every input to
float64 first; :class:`LinearSVM` hands float32 features to liblinear as they are (liblinear reads
them into its own double-precision rows either way, so the model is the same), which saves that
copy, 8 bytes per feature value, on the largest arrays of hard-negative mining (recipe §7).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm._base import _fit_liblinear
from sklearn.utils.validation import check_array, check_is_fitted

# liblinear's problem size is a C int: nonzeros plus two entries per row (bias, terminator)
_LIBLINEAR_MAX_ENTRIES = 2**31 - 1


class LinearSVM(ClassifierMixin, BaseEstimator):
    """L2-regularised hinge-loss SVM with a weighted positive class and a scaled bias feature.

    Minimises ``0.5 * (|w|^2 + (b / bias_multiplier)^2)
    + C * positive_weight * sum_pos max(0, 1 - z) + C * sum_neg max(0, 1 + z)``, z = X w + b.

    Parameters
    ----------
    C : liblinear ``-c``.
    positive_weight : liblinear ``-w1``: the positives' C is ``C * positive_weight``.
    bias_multiplier : liblinear ``-B``: value of the constant feature whose weight is the bias.
    tol : liblinear ``-e``; 0.1 is liblinear's default for ``-s 3``, which R-CNN left unchanged.
    max_iter : cap on liblinear's passes over the data.
    random_state : seeds liblinear's shuffling of the dual coordinates, for repeatable models.

    Attributes
    ----------
    coef_ : (D,) float64 weights.
    intercept_ : float, the bias ``b``.
    classes_ : array([0, 1]).
    n_iter_ : liblinear's number of passes.
    """

    def __init__(self, C: float = 0.001, positive_weight: float = 2.0, bias_multiplier: float = 10.0,
                 tol: float = 0.1, max_iter: int = 10000, random_state: int | None = 0):
        self.C = C
        self.positive_weight = positive_weight
        self.bias_multiplier = bias_multiplier
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray) -> LinearSVM:
        """X (N, D) float32 or float64 features (float32 is not copied), y (N,) labels in {0, 1} with both present."""
        X = check_array(X, dtype=(np.float32, np.float64), order="C")
        y = np.asarray(y).reshape(-1)
        if len(y) != len(X) or not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
            raise ValueError("LinearSVM needs one label in {0, 1} per row, with both classes present")
        entries = np.count_nonzero(X) + 2 * len(X)
        if entries > _LIBLINEAR_MAX_ENTRIES:
            raise ValueError(f"{len(X)} x {X.shape[1]} features hold {entries} nonzeros and bias entries; "
                             f"liblinear takes at most {_LIBLINEAR_MAX_ENTRIES}")
        # exactly what LinearSVC(penalty="l2", loss="hinge", dual=True, ...).fit does, minus its float64 copy
        coef, intercept, n_iter = _fit_liblinear(
            X, y, self.C, fit_intercept=True, intercept_scaling=self.bias_multiplier,
            class_weight={1: self.positive_weight, 0: 1.0}, penalty="l2", dual=True, verbose=0,
            max_iter=self.max_iter, tol=self.tol, random_state=self.random_state, loss="hinge")
        self.coef_ = coef[0]
        self.intercept_ = float(intercept[0])
        self.classes_ = np.array([0, 1])
        self.n_iter_ = int(np.max(n_iter))
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) margins ``X w + b``; positive means class 1. Computed in float32 for
        float32 X (never a float64 copy of X)."""
        check_is_fitted(self, "coef_")
        X = np.asarray(X)
        dtype = np.float32 if X.dtype == np.float32 else np.float64
        return X @ self.coef_.astype(dtype) + dtype(self.intercept_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) labels in {0, 1}."""
        return (self.decision_function(X) > 0).astype(np.int64)

    def objective(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """The primal objective's terms on (X (N, D), y (N,)), as R-CNN logs them after each update.

        Returns ``{"reg", "pos", "neg", "total"}``: the regulariser (bias included, divided by the
        bias multiplier as liblinear sees it), the weighted positive and negative hinge losses, and
        their sum.
        """
        y = np.asarray(y).reshape(-1)
        z = self.decision_function(X)
        pos = self.C * self.positive_weight * float(np.maximum(0.0, 1.0 - z[y == 1]).sum())
        neg = self.C * float(np.maximum(0.0, 1.0 + z[y == 0]).sum())
        reg = 0.5 * float(self.coef_ @ self.coef_) + 0.5 * (self.intercept_ / self.bias_multiplier) ** 2
        return {"reg": reg, "pos": pos, "neg": neg, "total": reg + pos + neg}
