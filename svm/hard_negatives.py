"""Per-class linear SVMs trained with R-CNN's hard-negative mining, one pass over the images (recipe §7).

Follows ``rcnn_train.m``: every class is mined at once from each image's features, so the (costly)
features of an image are computed once for all classes. For class j an image's negatives are its
windows with IoU < ``negative_overlap`` to every GT box of class j (GT boxes of other classes
included). The first time a class sees negatives it caches all of them and trains; afterwards only
negatives scoring above ``hard_threshold`` under the current model are cached. A class is retrained
once more than ``retrain_limit`` negatives were added since its last training, and after the last
image; each retrain is followed by evicting cached negatives scoring below ``evict_threshold``.

Memory (recipe §7; docs/benchmarks.md, "SVM stage at VOC size"): R-CNN kept a float32 copy of each
cached negative per class. Here a window cached by several classes is stored once
(:class:`NegativeStore`, float32 or float16), each class keeps row numbers into it, rows no class
references any more are freed, the positives are never copied per class, and a retrain builds one
float32 training matrix that liblinear reads without a float64 copy. Peak memory is about the
store, plus the largest class's training matrix (4 bytes per value) and liblinear's own rows
(16 bytes per nonzero value).
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


class NegativeStore:
    """The cached negatives of all classes, each (image, window) stored once.

    Rows are kept in blocks (one per added image, merged by :meth:`compact`), in order of
    addition; row ids are that order. ``dtype`` is the storage type (float32, or float16 for half
    the memory); rows are read back as float32.
    """

    def __init__(self, dim: int, dtype=np.float32, block_rows: int = 4096):
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.block_rows = block_rows
        self._blocks: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._starts = np.zeros(1, np.int64)  # block b holds rows _starts[b] .. _starts[b + 1] - 1

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._blocks)

    def add(self, features: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Append (n, D) features with their (n, 2) keys; returns their (n,) row ids."""
        first = len(self)
        if len(features):
            self._blocks.append(np.asarray(features, dtype=self.dtype))
            self._keys.append(np.asarray(keys, dtype=np.int64))
            self._starts = np.append(self._starts, first + len(features))
        return np.arange(first, len(self), dtype=np.int64)

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = np.searchsorted(self._starts, rows, side="right") - 1
        return block, rows - self._starts[block]

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Write the features of ``rows`` (M,) sorted ids into ``out`` (M, D), converting to out's dtype."""
        block, local = self._locate(rows)
        bounds = np.flatnonzero(np.diff(block)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rows)]):
            out[lo:hi] = self._blocks[block[lo]][local[lo:hi]]

    def keys(self, rows: np.ndarray) -> np.ndarray:
        """(M,) row ids -> (M, 2) keys (image, window)."""
        block, local = self._locate(rows)
        result = np.empty((len(rows), 2), np.int64)
        bounds = np.flatnonzero(np.diff(block)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(rows)]):
            result[lo:hi] = self._keys[block[lo]][local[lo:hi]]
        return result

    def compact(self, referenced: np.ndarray) -> np.ndarray:
        """Drop the rows where ``referenced`` (len(self),) bool is False, merging blocks up to
        ``block_rows``; returns the (len(self),) map from old row ids to new ones (-1: dropped).

        Only one merged block is built at a time, so the peak is the store plus one block.
        """
        blocks, keys, pending, pending_keys = [], [], [], []

        def flush():
            if pending:
                blocks.append(pending[0] if len(pending) == 1 else np.concatenate(pending))
                keys.append(pending_keys[0] if len(pending_keys) == 1 else np.concatenate(pending_keys))
                pending.clear()
                pending_keys.clear()

        pending_rows = 0
        for b in range(len(self._blocks)):
            keep = referenced[self._starts[b]:self._starts[b + 1]]
            block, block_keys = self._blocks[b], self._keys[b]
            self._blocks[b] = self._keys[b] = None  # freed as soon as its rows are moved
            if not keep.all():
                block, block_keys = block[keep], block_keys[keep]
            if len(block) == 0:
                continue
            if pending_rows + len(block) > self.block_rows:
                flush()
                pending_rows = 0
            pending.append(block)
            pending_keys.append(block_keys)
            pending_rows += len(block)
        flush()
        self._blocks, self._keys = blocks, keys
        self._starts = np.r_[0, np.cumsum([len(b) for b in blocks], dtype=np.int64)].astype(np.int64)
        remap = np.full(len(referenced), -1, np.int64)
        remap[referenced] = np.arange(int(referenced.sum()), dtype=np.int64)
        return remap


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
    cache_dtype : storage type of the cached negatives, "float32" (R-CNN) or "float16".
    compact_fraction : the store drops rows no class references once they are more than this
        fraction of its rows.
    held_out_folds : F >= 2: after mining, each class is also trained F more times, fold f leaving
        out the positives and cached negatives of the images ``i % F == f``, so that every image has
        a model that never saw it (:meth:`held_out_decision_function`); 0: no fold models.
        Probabilities fitted on a model's own training windows can be overconfident (the hinge
        loss pushes its margins there past +-1); the fold models give margins as an unseen image
        gets them, like scikit-learn's ``CalibratedClassifierCV(ensemble=False)`` (measured on
        two generated sets in docs/results.md: no better calibrated there). They
        are trained on the final caches only (no mining of their own): the windows the full
        model found hard are the ones that decide its margins.

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
    fold_coef_ : (F, K, D) float32 and ``fold_intercept_`` (F, K) float32, the fold models (only
        with ``held_out_folds``; a fold without positives or negatives of a class scores it -inf).
    store_stats_ : dict of the negative store's size: ``peak_rows``, ``peak_bytes``,
        ``peak_referenced`` (the most row references over all classes at once: a window cached by
        several classes counts once per class there, once in the rows; per-class caches would
        have held that many rows) and, at the end, ``rows`` and ``referenced``.

    A class without positives, or that never saw a negative, gets no SVM: ``coef_`` row 0 and
    ``intercept_`` -inf, so it scores -inf everywhere and never detects; :meth:`fit` warns and
    names it. Classes without positives are not mined at all, so they cache nothing.

    Progress is logged at INFO level on the ``svm.hard_negatives`` logger, like R-CNN's console
    output.
    """

    def __init__(self, C: float = 0.001, positive_weight: float = 2.0, bias_multiplier: float = 10.0,
                 negative_overlap: float = 0.3, hard_threshold: float = -1.0001,
                 evict_threshold: float = -1.2, retrain_limit: int = 2000, tol: float = 0.1,
                 max_iter: int = 10000, random_state: int | None = 0, cache_dtype: str = "float32",
                 compact_fraction: float = 0.25, held_out_folds: int = 0):
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
        self.cache_dtype = cache_dtype
        self.compact_fraction = compact_fraction
        self.held_out_folds = held_out_folds

    @classmethod
    def from_config(cls, config: SVMConfig) -> HardNegativeSVMs:
        return cls(C=config.C, positive_weight=config.positive_weight,
                   bias_multiplier=config.bias_multiplier, negative_overlap=config.negative_overlap,
                   hard_threshold=config.hard_negative_threshold, evict_threshold=config.evict_threshold,
                   retrain_limit=config.retrain_limit, max_iter=config.max_iter, cache_dtype=config.cache_dtype,
                   held_out_folds=config.calibration_folds)

    def fit(self, X_pos: np.ndarray, y_pos: np.ndarray, negative_images: Iterable[tuple], num_classes: int,
            pos_images: np.ndarray | None = None) -> HardNegativeSVMs:
        """Train all K classes in one pass over ``negative_images``.

        X_pos (P, D): features of the positives (the GT boxes), float32 to avoid a copy; y_pos
        (P,): their classes in 0..K-1. ``negative_images`` yields, per training image, its windows'
        features (N, D) and overlaps (N, K), each window's IoU with the best GT box of each class,
        and optionally (N,) window indices (the keys of :attr:`negative_keys_`; default 0..N-1),
        e.g. when duplicate windows were left out. It is iterated exactly once, so it may be a
        generator computing features on the fly. In a single pass each (image, window) is offered
        once, so the cache never holds a window twice (R-CNN's duplicate check only matters for
        several mining epochs). ``pos_images`` (P,): the stream index of the image each positive
        comes from, needed with ``held_out_folds``.
        """
        if self.cache_dtype not in ("float32", "float16"):
            raise ValueError(f"cache_dtype must be 'float32' or 'float16', not {self.cache_dtype!r}")
        if self.held_out_folds == 1 or self.held_out_folds < 0:
            raise ValueError(f"held_out_folds must be 0 or at least 2, not {self.held_out_folds}")
        X_pos = np.asarray(X_pos, dtype=np.float32)
        y_pos = np.asarray(y_pos).reshape(-1)
        if X_pos.ndim != 2 or len(X_pos) != len(y_pos):
            raise ValueError(f"X_pos must be (P, D) with one label each; got {X_pos.shape} and {y_pos.shape}")
        if len(y_pos) and (y_pos.min() < 0 or y_pos.max() >= num_classes):
            raise ValueError(f"y_pos must hold class indices in 0..{num_classes - 1}")
        if self.held_out_folds and (pos_images is None or np.shape(pos_images) != y_pos.shape):
            raise ValueError("held_out_folds needs pos_images: the image index of each positive")
        dim = X_pos.shape[1]
        positives = [np.flatnonzero(y_pos == j) for j in range(num_classes)]  # indices: no per-class copies
        mined = [j for j in range(num_classes) if len(positives[j])]
        store = NegativeStore(dim, self.cache_dtype)
        rows = {j: np.zeros(0, np.int64) for j in mined}  # each class's cached negatives: store row ids
        added = dict.fromkeys(mined, 0)  # negatives added since the class's last training
        coef = np.zeros((num_classes, dim), np.float32)
        intercept = np.zeros(num_classes, np.float32)
        trained = np.zeros(num_classes, bool)
        negative_keys = [np.zeros((0, 2), np.int64) for _ in range(num_classes)]
        history: list[dict] = []
        stats = {"peak_rows": 0, "peak_bytes": 0, "peak_referenced": 0}

        def retrain(j: int, image: int, reason: str) -> None:
            svm, kept, entry = self._retrain(X_pos, positives[j], store, rows[j], added[j])
            coef[j], intercept[j], trained[j] = svm.coef_, svm.intercept_, True
            negative_keys[j] = store.keys(rows[j])
            rows[j], added[j] = rows[j][kept], 0
            history.append({"class": j, "image": image, "reason": reason, **entry})
            logger.info("class %d, image %d (%s): %d pos, %d neg (%d new, %d evicted after), "
                        "obj %.3f = %.3f (pos) + %.3f (neg) + %.3f (reg)", j, image, reason,
                        entry["n_pos"], entry["n_neg"], entry["n_added"], entry["n_evicted"],
                        entry["total"], entry["pos"], entry["neg"], entry["reg"])

        def compact_if_worth_it() -> None:
            referenced = np.zeros(len(store), bool)
            for ids in rows.values():
                referenced[ids] = True
            if (~referenced).sum() > self.compact_fraction * len(store):
                remap = store.compact(referenced)
                for j in rows:
                    rows[j] = remap[rows[j]]

        image = -1
        for image, item in enumerate(negative_images):
            features, overlaps = np.asarray(item[0], dtype=np.float32), np.asarray(item[1])
            windows = np.arange(len(features)) if len(item) < 3 else np.asarray(item[2], dtype=np.int64)
            if (features.ndim != 2 or features.shape[1] != dim or overlaps.shape != (len(features), num_classes)
                    or windows.shape != (len(features),)):
                raise ValueError(f"image {image}: features must be (N, {dim}), overlaps (N, {num_classes}) "
                                 f"and windows (N,); got {features.shape}, {overlaps.shape} and {windows.shape}")
            candidate = overlaps < self.negative_overlap  # (N, K)
            hard = features @ coef.T + intercept > self.hard_threshold
            candidate[:, trained] &= hard[:, trained]
            candidate[:, [j for j in range(num_classes) if j not in rows]] = False
            cached = np.flatnonzero(candidate.any(axis=1))  # windows some class caches: stored once
            ids = store.add(features[cached], np.column_stack([np.full(len(cached), image, np.int64), windows[cached]]))
            for j in mined:
                new = ids[candidate[cached, j]]
                if len(new):
                    rows[j] = np.concatenate([rows[j], new])
                    added[j] += len(new)
            stats["peak_rows"] = max(stats["peak_rows"], len(store))
            stats["peak_bytes"] = max(stats["peak_bytes"], store.nbytes)
            stats["peak_referenced"] = max(stats["peak_referenced"], sum(len(r) for r in rows.values()))
            for j in mined:
                if not trained[j] and len(rows[j]):
                    retrain(j, image, "first")
                elif added[j] > self.retrain_limit:
                    retrain(j, image, "limit")
            if history and history[-1]["image"] == image:  # rows are only released by retrains
                compact_if_worth_it()
        for j in mined:
            # Without new negatives a retrain would only drop evicted ones; they score below -1, so
            # carry no hinge loss, and the optimum is unchanged.
            if added[j]:
                retrain(j, image, "final")

        if self.held_out_folds:
            self.fold_coef_, self.fold_intercept_ = self._fold_models(
                X_pos, positives, np.asarray(pos_images).reshape(-1), store, rows, dim, num_classes)
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
        self.store_stats_ = {**stats, "rows": len(store), "referenced": int(sum(len(r) for r in rows.values()))}
        return self

    def _retrain(self, X_pos: np.ndarray, positive_rows: np.ndarray, store: NegativeStore, negative_rows: np.ndarray,
                 n_added: int) -> tuple[LinearSVM, np.ndarray, dict]:
        """Train on the class's positives and cached negatives; returns the SVM, the mask (M,) of
        the cached negatives to keep (not scoring below ``evict_threshold``) and the history entry."""
        n_pos = len(positive_rows)
        X = np.empty((n_pos + len(negative_rows), X_pos.shape[1]), np.float32)  # the one training copy
        np.take(X_pos, positive_rows, axis=0, out=X[:n_pos])
        store.gather(negative_rows, X[n_pos:])
        y = np.zeros(len(X), np.int64)
        y[:n_pos] = 1
        svm = LinearSVM(C=self.C, positive_weight=self.positive_weight, bias_multiplier=self.bias_multiplier,
                        tol=self.tol, max_iter=self.max_iter, random_state=self.random_state).fit(X, y)
        easy = svm.decision_function(X[n_pos:]) < self.evict_threshold
        entry = {"n_pos": n_pos, "n_neg": len(negative_rows), "n_added": n_added,
                 "n_evicted": int(easy.sum()), "n_iter": svm.n_iter_, **svm.objective(X, y)}
        return svm, ~easy, entry

    def _fold_models(self, X_pos: np.ndarray, positives: list[np.ndarray], pos_images: np.ndarray,
                     store: NegativeStore, rows: dict[int, np.ndarray], dim: int,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
        """(F, K, D) weights and (F, K) biases, fold f trained without the images ``i % F == f``."""
        folds = self.held_out_folds
        coef = np.zeros((folds, num_classes, dim), np.float32)
        intercept = np.full((folds, num_classes), -np.inf, np.float32)
        for j, negative_rows in rows.items():
            negative_folds = store.keys(negative_rows)[:, 0] % folds
            for f in range(folds):
                kept_pos = positives[j][pos_images[positives[j]] % folds != f]
                kept_neg = negative_rows[negative_folds != f]
                if len(kept_pos) and len(kept_neg):
                    svm, _, _ = self._retrain(X_pos, kept_pos, store, kept_neg, 0)
                    coef[f, j], intercept[f, j] = svm.coef_, svm.intercept_
        return coef, intercept

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, K) SVM margins, one matmul for all classes."""
        check_is_fitted(self, "coef_")
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

    def held_out_decision_function(self, X: np.ndarray, image: int) -> np.ndarray:
        """(N, D) features of stream image ``image`` -> (N, K) margins under the fold model that
        was trained without that image (``held_out_folds``)."""
        check_is_fitted(self, "fold_coef_")
        fold = image % self.held_out_folds
        return np.asarray(X, dtype=np.float32) @ self.fold_coef_[fold].T + self.fold_intercept_[fold]
