"""Per-class linear SVMs trained with R-CNN's hard-negative mining, one pass over the images (recipe §7).

Follows ``rcnn_train.m``: every class is mined at once from each image's features, so the (costly)
features of an image are computed once for all classes. For class j an image's negatives are its
windows with IoU < ``negative_overlap`` to every GT box of class j (GT boxes of other classes
included). The first time a class sees negatives it caches all of them and trains; afterwards only
negatives scoring above ``hard_threshold`` under the current model are cached. A class is retrained
once more than ``retrain_limit`` negatives were added since its last training, and after the last
image; each retrain is followed by evicting cached negatives scoring below ``evict_threshold``.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from detection.core.config import SVMConfig
from svm.linear_svm import LinearSVM

logger = logging.getLogger(__name__)


class _NegativeCache:
    """One class's cached negatives: features (M, D) float32 and keys (M, 2) = (image, window)."""

    def __init__(self, dim: int):
        self._features = [np.zeros((0, dim), np.float32)]
        self._keys = [np.zeros((0, 2), np.int64)]
        self.num_added = 0  # negatives added since the class's last training

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    def add(self, features: np.ndarray, keys: np.ndarray) -> None:
        self._features.append(features)
        self._keys.append(keys)
        self.num_added += len(keys)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # Chunks are joined only when the class is retrained, so caching stays linear in the images.
        if len(self._keys) > 1:
            self._features = [np.concatenate(self._features)]
            self._keys = [np.concatenate(self._keys)]
        return self._features[0], self._keys[0]

    def keep(self, mask: np.ndarray) -> None:
        features, keys = self.arrays()
        self._features, self._keys = [features[mask]], [keys[mask]]


class HardNegativeSVMs(BaseEstimator):
    """K one-vs-rest linear SVMs (:class:`~svm.linear_svm.LinearSVM`) with hard-negative mining.

    Parameters
    ----------
    C, positive_weight, bias_multiplier, tol, max_iter, random_state : passed to each
        :class:`~svm.linear_svm.LinearSVM` (liblinear ``-c``, ``-w1``, ``-B``, ``-e``).
    negative_overlap : a window is a negative of class j when its IoU with every GT box of class j
        is below this.
    hard_threshold : after its first training, a class caches only negatives scoring above this
        (R-CNN's -1.0001 rather than -1, so that negatives on the margin count as hard).
    evict_threshold : after each retrain, cached negatives scoring below this are dropped.
    retrain_limit : a class is retrained once more than this many negatives were added since its
        last training.

    Attributes
    ----------
    coef_ : (K, D) float32 weights, one row per class (float32 like the features they score).
    intercept_ : (K,) float32 biases.
    history_ : list of dicts, one per retrain, in order: ``class``, ``image`` (index in the
        stream), ``reason`` ("first", "limit" or "final"), ``n_pos``, ``n_neg`` (negatives trained
        on), ``n_added`` (negatives added since the previous training), ``n_evicted``, ``n_iter``
        and the objective's terms ``reg``, ``pos``, ``neg``, ``total``; plain Python numbers.
    negative_keys_ : list of K arrays (M_j, 2) int64: (image index in the stream, window index)
        of the negatives each class's final model was trained on.
    n_images_ : number of images the stream yielded.

    A class without positives, or that never saw a negative, gets no SVM: ``coef_`` row 0 and
    ``intercept_`` -inf, so it scores -inf everywhere and never detects; :meth:`fit` warns and
    names it. Classes without positives are not mined at all, so they cache nothing.

    Progress is logged at INFO level on the ``svm.hard_negatives`` logger, like R-CNN's console
    output.
    """

    def __init__(self, C: float = 0.001, positive_weight: float = 2.0, bias_multiplier: float = 10.0,
                 negative_overlap: float = 0.3, hard_threshold: float = -1.0001,
                 evict_threshold: float = -1.2, retrain_limit: int = 2000, tol: float = 0.1,
                 max_iter: int = 10000, random_state: int | None = 0):
        self.C = C
        self.positive_weight = positive_weight
        self.bias_multiplier = bias_multiplier
        self.negative_overlap = negative_overlap
        self.hard_threshold = hard_threshold
        self.evict_threshold = evict_threshold
        self.retrain_limit = retrain_limit
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    @classmethod
    def from_config(cls, config: SVMConfig) -> HardNegativeSVMs:
        return cls(C=config.C, positive_weight=config.positive_weight,
                   bias_multiplier=config.bias_multiplier, negative_overlap=config.negative_overlap,
                   hard_threshold=config.hard_negative_threshold, evict_threshold=config.evict_threshold,
                   retrain_limit=config.retrain_limit, max_iter=config.max_iter)

    def fit(self, X_pos: np.ndarray, y_pos: np.ndarray,
            negative_images: Iterable[tuple[np.ndarray, np.ndarray]], num_classes: int) -> HardNegativeSVMs:
        """Train all K classes in one pass over ``negative_images``.

        X_pos (P, D): features of the positives (the GT boxes); y_pos (P,): their classes in
        0..K-1. ``negative_images`` yields, per training image, its windows' features (N, D) and
        overlaps (N, K), each window's IoU with the best GT box of each class. It is iterated
        exactly once, so it may be a generator computing features on the fly. In a single pass each
        (image, window) is offered once, so the cache never holds a window twice (R-CNN's duplicate
        check only matters for several mining epochs).
        """
        X_pos = np.asarray(X_pos, dtype=np.float32)
        y_pos = np.asarray(y_pos).reshape(-1)
        if X_pos.ndim != 2 or len(X_pos) != len(y_pos):
            raise ValueError(f"X_pos must be (P, D) with one label each; got {X_pos.shape} and {y_pos.shape}")
        if len(y_pos) and (y_pos.min() < 0 or y_pos.max() >= num_classes):
            raise ValueError(f"y_pos must hold class indices in 0..{num_classes - 1}")
        dim = X_pos.shape[1]
        positives = [X_pos[y_pos == j] for j in range(num_classes)]
        mined = [j for j in range(num_classes) if len(positives[j])]
        caches = {j: _NegativeCache(dim) for j in mined}
        coef = np.zeros((num_classes, dim), np.float32)
        intercept = np.zeros(num_classes, np.float32)
        trained = np.zeros(num_classes, bool)
        negative_keys = [np.zeros((0, 2), np.int64) for _ in range(num_classes)]
        history: list[dict] = []

        def retrain(j: int, image: int, reason: str) -> None:
            svm, keys, entry = self._retrain(positives[j], caches[j])
            coef[j], intercept[j], trained[j], negative_keys[j] = svm.coef_, svm.intercept_, True, keys
            history.append({"class": j, "image": image, "reason": reason, **entry})
            logger.info("class %d, image %d (%s): %d pos, %d neg (%d new, %d evicted after), "
                        "obj %.3f = %.3f (pos) + %.3f (neg) + %.3f (reg)", j, image, reason,
                        entry["n_pos"], entry["n_neg"], entry["n_added"], entry["n_evicted"],
                        entry["total"], entry["pos"], entry["neg"], entry["reg"])

        image = -1
        for image, (features, overlaps) in enumerate(negative_images):
            features = np.asarray(features, dtype=np.float32)
            overlaps = np.asarray(overlaps)
            if features.ndim != 2 or features.shape[1] != dim or overlaps.shape != (len(features), num_classes):
                raise ValueError(f"image {image}: features must be (N, {dim}) and overlaps (N, {num_classes}); "
                                 f"got {features.shape} and {overlaps.shape}")
            is_negative = overlaps < self.negative_overlap
            scores = features @ coef.T + intercept
            for j in mined:
                candidate = is_negative[:, j]
                if trained[j]:
                    candidate &= scores[:, j] > self.hard_threshold
                windows = np.flatnonzero(candidate)
                if len(windows):
                    keys = np.column_stack([np.full(len(windows), image, np.int64), windows])
                    caches[j].add(features[windows], keys)
                if not trained[j] and len(caches[j]):
                    retrain(j, image, "first")
                elif caches[j].num_added > self.retrain_limit:
                    retrain(j, image, "limit")
        for j in mined:
            # Without new negatives a retrain would only drop evicted ones; they score below -1, so
            # carry no hinge loss, and the optimum is unchanged.
            if caches[j].num_added:
                retrain(j, image, "final")

        untrained = np.flatnonzero(~trained)
        if len(untrained):
            warnings.warn(f"classes {untrained.tolist()} have no positives or no negatives: "
                          "no SVM trained, they score -inf", RuntimeWarning, stacklevel=2)
        intercept[untrained] = -np.inf
        self.coef_ = coef
        self.intercept_ = intercept
        self.history_ = history
        self.negative_keys_ = negative_keys
        self.n_images_ = image + 1
        return self

    def _retrain(self, positives: np.ndarray, cache: _NegativeCache) -> tuple[LinearSVM, np.ndarray, dict]:
        """Train on the class's positives and cache, then evict easy negatives from the cache."""
        negatives, keys = cache.arrays()
        n_pos = len(positives)
        X = np.empty((n_pos + len(negatives), positives.shape[1]), np.float64)
        X[:n_pos], X[n_pos:] = positives, negatives
        y = np.zeros(len(X), np.int64)
        y[:n_pos] = 1
        svm = LinearSVM(C=self.C, positive_weight=self.positive_weight, bias_multiplier=self.bias_multiplier,
                        tol=self.tol, max_iter=self.max_iter, random_state=self.random_state).fit(X, y)
        easy = svm.decision_function(X[n_pos:]) < self.evict_threshold
        entry = {"n_pos": n_pos, "n_neg": len(negatives), "n_added": cache.num_added,
                 "n_evicted": int(easy.sum()), "n_iter": svm.n_iter_, **svm.objective(X, y)}
        cache.keep(~easy)
        cache.num_added = 0
        return svm, keys, entry

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) SVM margins, one matmul for all classes."""
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_
