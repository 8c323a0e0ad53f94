"""Per-class probabilities from SVM margins: Platt scaling (Platt 1999; Lin, Lin & Weng 2007).

An SVM margin says on which side of the boundary a window lies, not how likely it is to be right:
at the recipe's threshold of -1.5 (recipe §9) almost every window of a photo passes. Platt scaling
fits, for each class j, p_j(m) = 1 / (1 + exp(A_j·m + B_j)) to windows labelled correct or not,
by Newton's method on the cross-entropy with Platt's smoothed targets (N+ + 1)/(N+ + 2) and
1/(N- + 2), which keep A and B finite when the classes separate.

A_j is kept <= 0, so each p_j is non-decreasing in the margin and ranking a class's detections
by p_j is ranking them by margin (the per-class AP is unchanged); where the margins do not rise
with the labels at all (A_j would be positive), p_j is the constant smoothed positive rate.
Across classes the order can change, which the per-class VOC and COCO APs never look at.
"""
from __future__ import annotations

import numpy as np

NEWTON_ITERATIONS = 100  # Lin, Lin & Weng's maxiter
MIN_STEP = 1e-10  # their minstep
SIGMA = 1e-12  # their sigma: keeps the Hessian positive definite


def _log1pexp(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) without overflow."""
    return np.logaddexp(0.0, x)


def fit_platt(margins: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(N,) margins and (N,) 0/1 labels -> (A, B) of p = 1 / (1 + exp(A·m + B)), with A <= 0.

    Lin, Lin & Weng's (2007) Newton iteration with backtracking line search, vectorised over
    the samples. Without positives or without negatives, A = 0 and B gives the smoothed rate.
    """
    margins = np.asarray(margins, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    if len(margins) != len(labels):
        raise ValueError(f"margins ({len(margins)}) and labels ({len(labels)}) differ in length")
    positives = int(labels.sum())
    negatives = len(labels) - positives
    hi, lo = (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0)
    target = np.where(labels, hi, lo)
    prior_b = float(np.log((negatives + 1.0) / (positives + 1.0)))
    if positives == 0 or negatives == 0:
        return 0.0, prior_b

    def objective(a: float, b: float) -> float:
        # -sum t·log p + (1 - t)·log(1 - p) with f = A·m + B and p = 1 / (1 + exp(f))
        f = a * margins + b
        return float(np.sum(target * f + _log1pexp(-f)))

    a, b = 0.0, prior_b
    value = objective(a, b)
    for _ in range(NEWTON_ITERATIONS):
        f = a * margins + b
        p = np.exp(-_log1pexp(f))  # 1 / (1 + exp(f))
        q = 1.0 - p
        d2 = p * q
        h11, h22, h21 = float(np.sum(margins * margins * d2)) + SIGMA, float(np.sum(d2)) + SIGMA, float(
            np.sum(margins * d2))
        d1 = target - p
        g1, g2 = float(np.sum(margins * d1)), float(np.sum(d1))
        if abs(g1) < 1e-5 and abs(g2) < 1e-5:
            break
        det = h11 * h22 - h21 * h21
        da, db = -(h22 * g1 - h21 * g2) / det, -(-h21 * g1 + h11 * g2) / det
        gd = g1 * da + g2 * db
        step = 1.0
        while step >= MIN_STEP:
            new_value = objective(a + step * da, b + step * db)
            if new_value < value + 1e-4 * step * gd:
                a, b, value = a + step * da, b + step * db, new_value
                break
            step /= 2
        else:
            break  # no descent along the Newton direction: at the optimum to machine precision
    if a > 0:  # margins anti-correlated with correctness: no monotone increasing fit beats a constant
        return 0.0, prior_b
    return a, b


class PlattScaling:
    """One sigmoid per class on that class's SVM margins (module docstring), scikit-learn style.

    After :meth:`fit`: ``coef_`` (K,) the A_j (all <= 0) and ``intercept_`` (K,) the B_j.
    """

    def fit(self, margins: np.ndarray, labels: np.ndarray, classes: np.ndarray, num_classes: int) -> PlattScaling:
        """Fit class j's sigmoid on the samples with ``classes == j``.

        Args:
            margins: (N,) each sample's margin under its class's SVM.
            labels: (N,) 1 where the sample is a correct detection of its class, else 0.
            classes: (N,) int64 class index of each sample, in [0, num_classes).
            num_classes: K.
        """
        margins = np.asarray(margins, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels).reshape(-1)
        classes = np.asarray(classes, dtype=np.int64).reshape(-1)
        if not len(margins) == len(labels) == len(classes):
            raise ValueError("margins, labels and classes must have one entry per sample")
        if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
            raise ValueError(f"class indices must lie in [0, {num_classes})")
        fitted = [fit_platt(margins[classes == j], labels[classes == j]) for j in range(num_classes)]
        self.coef_ = np.array([a for a, _ in fitted], dtype=np.float64).reshape(num_classes)
        self.intercept_ = np.array([b for _, b in fitted], dtype=np.float64).reshape(num_classes)
        return self

    def predict_proba(self, margins: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
        """Probabilities in [0, 1]: (N, K) margins -> (N, K); or (M,) margins of the classes ``labels`` (M,) -> (M,)."""
        margins = np.asarray(margins, dtype=np.float64)
        if labels is None:
            a, b = self.coef_, self.intercept_
        else:
            labels = np.asarray(labels, dtype=np.int64)
            a, b = self.coef_[labels], self.intercept_[labels]
        return np.exp(-_log1pexp(a * margins + b))

    def to_state(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef_.copy(), "intercept": self.intercept_.copy()}

    @classmethod
    def from_state(cls, state: dict) -> PlattScaling:
        scaling = cls()
        scaling.coef_ = np.asarray(state["coef"], dtype=np.float64).reshape(-1)
        scaling.intercept_ = np.asarray(state["intercept"], dtype=np.float64).reshape(-1)
        if scaling.coef_.shape != scaling.intercept_.shape:
            raise ValueError("Platt scaling state: coef and intercept differ in length")
        return scaling
