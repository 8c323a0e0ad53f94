"""One binary linear SVM solved by liblinear, set up exactly as R-CNN's ``update_model`` (recipe §7).

R-CNN calls ``liblinear_train`` with ``-s 3 -c 0.001 -w1 2 -B 10``: L2-regularised hinge loss
solved in the dual, the positive class's C multiplied by 2, and a constant feature of value 10
appended so that the bias is learned as ``b = 10 * w_bias`` and regularised as ``(b / 10)^2``.
scikit-learn's :class:`~sklearn.svm.LinearSVC` wraps the same liblinear solver; its
``class_weight`` is ``-w1`` and its ``intercept_scaling`` is ``-B``.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import LinearSVC
from sklearn.utils.validation import check_is_fitted


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
    svc_ : the fitted :class:`~sklearn.svm.LinearSVC`.
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
        """X (N, D) features, y (N,) labels in {0, 1} with both present."""
        y = np.asarray(y).reshape(-1)
        if not np.isin(y, (0, 1)).all() or len(np.unique(y)) != 2:
            raise ValueError("LinearSVM needs labels in {0, 1} with both classes present")
        self.svc_ = LinearSVC(
            penalty="l2", loss="hinge", dual=True, C=self.C,
            class_weight={1: self.positive_weight, 0: 1.0},
            fit_intercept=True, intercept_scaling=self.bias_multiplier,
            tol=self.tol, max_iter=self.max_iter, random_state=self.random_state,
        ).fit(X, y)
        self.coef_ = self.svc_.coef_[0]
        self.intercept_ = float(self.svc_.intercept_[0])
        self.classes_ = self.svc_.classes_
        self.n_iter_ = int(self.svc_.n_iter_)
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N,) margins ``X w + b``; positive means class 1."""
        check_is_fitted(self, "coef_")
        return np.asarray(X) @ self.coef_ + self.intercept_

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
