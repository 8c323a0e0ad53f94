"""Linear SVMs, R-CNN's hard-negative mining and the feature-norm scale (recipe §7)."""
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.svm import LinearSVC

import svm.hard_negatives as hn
import svm.linear_svm as linear_svm_module
from detection.core.config import FeatureConfig, SVMConfig
from detection.data.records import ImageRecord
from detection.training.windows import training_windows
from features.backbones import build_backbone
from features.extractor import SPPFeatureExtractor, distinct_windows, window_groups
from svm.benchmark import SyntheticMining, synthetic_mining_data
from svm.feature_norm import feature_norm_scale, sample_indices
from svm.hard_negatives import HardNegativeSVMs, NegativeStore
from svm.linear_svm import LinearSVM
from tools.cli import main


def blobs(rng, n, dim, centre, spread=1.0):
    return (rng.normal(scale=spread, size=(n, dim)) + centre).astype(np.float32)


def toy_set(rng, n=100, dim=10, offset=6.0):
    # per-dimension offset 6 gives vectors of norm ~20, the scale R-CNN's C = 0.001 was chosen for
    X = np.concatenate([blobs(rng, n, dim, offset), blobs(rng, n, dim, -offset)])
    y = np.r_[np.ones(n, np.int64), np.zeros(n, np.int64)]
    return X, y


# -- LinearSVM ---------------------------------------------------------------------------------

def test_linear_svm_separates_toy_set_with_rcnn_defaults():
    rng = np.random.default_rng(0)
    X, y = toy_set(rng)
    svm = LinearSVM().fit(X, y)
    assert svm.coef_.shape == (10,) and isinstance(svm.intercept_, float)
    assert svm.decision_function(X).shape == (200,)
    np.testing.assert_array_equal(svm.predict(X), y)
    X_test, y_test = toy_set(rng)
    assert svm.score(X_test, y_test) == 1.0


def test_liblinear_gets_rcnn_options_and_float32_is_not_copied(monkeypatch):
    """The same model as LinearSVC with R-CNN's -s 3 -c -w1 -B -e options, float32 handed over as is."""
    rng = np.random.default_rng(1)
    X, y = toy_set(rng, n=30, dim=5, offset=1.0)
    svm = LinearSVM(C=0.01, positive_weight=2.0, bias_multiplier=10.0).fit(X, y)
    svc = LinearSVC(penalty="l2", loss="hinge", dual=True, C=0.01, class_weight={1: 2.0, 0: 1.0},
                    intercept_scaling=10.0, tol=0.1, random_state=0).fit(X.astype(np.float64), y)
    np.testing.assert_array_equal(svm.coef_, svc.coef_[0])
    assert svm.intercept_ == svc.intercept_[0] and svm.n_iter_ == svc.n_iter_
    seen = []
    real = linear_svm_module._fit_liblinear
    monkeypatch.setattr(linear_svm_module, "_fit_liblinear", lambda X, *a, **k: seen.append(X) or real(X, *a, **k))
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    LinearSVM().fit(X32, y)
    assert seen[0] is X32  # no float64 (or any) copy
    assert LinearSVM().fit(X32, y).decision_function(X32).dtype == np.float32


def test_positive_weight_and_bias_multiplier_mean_what_liblinear_means():
    rng = np.random.default_rng(2)
    X, y = toy_set(rng, n=40, dim=4, offset=0.7)  # overlapping blobs: the hinge terms matter
    tight = dict(tol=1e-10, max_iter=1_000_000)
    svm = LinearSVM(C=0.05, positive_weight=2.0, bias_multiplier=10.0, **tight).fit(X, y)
    # -w1 2 is the same as every positive counted twice
    X_dup = np.concatenate([X, X[y == 1]])
    y_dup = np.r_[y, np.ones((y == 1).sum(), np.int64)]
    plain = LinearSVM(C=0.05, positive_weight=1.0, bias_multiplier=10.0, **tight).fit(X_dup, y_dup)
    np.testing.assert_allclose(plain.coef_, svm.coef_, atol=1e-5)
    assert plain.intercept_ == pytest.approx(svm.intercept_, abs=1e-4)
    # -B 10 is a constant feature 10 whose (regularised) weight times 10 is the bias
    X_bias = np.hstack([X, np.full((len(X), 1), 10.0)])
    manual = LinearSVC(loss="hinge", dual=True, C=0.05, class_weight={1: 2.0, 0: 1.0},
                       fit_intercept=False, **tight).fit(X_bias, y)
    np.testing.assert_allclose(manual.coef_[0, :-1], svm.coef_, atol=1e-5)
    assert 10.0 * manual.coef_[0, -1] == pytest.approx(svm.intercept_, abs=1e-4)


def test_objective_terms_as_rcnn_logs_them():
    rng = np.random.default_rng(3)
    X, y = toy_set(rng, n=40, dim=4, offset=0.7)
    svm = LinearSVM(C=0.05, tol=1e-10, max_iter=1_000_000).fit(X, y)
    z = X @ svm.coef_ + svm.intercept_
    terms = svm.objective(X, y)
    assert terms["pos"] == pytest.approx(0.05 * 2.0 * np.maximum(0, 1 - z[y == 1]).sum())
    assert terms["neg"] == pytest.approx(0.05 * np.maximum(0, 1 + z[y == 0]).sum())
    assert terms["reg"] == pytest.approx(0.5 * svm.coef_ @ svm.coef_ + 0.5 * (svm.intercept_ / 10.0) ** 2)
    assert terms["total"] == pytest.approx(terms["reg"] + terms["pos"] + terms["neg"])
    # the fitted model is the minimum of exactly this objective
    for k in range(5):
        moved = LinearSVM(C=0.05)
        moved.coef_ = svm.coef_ + rng.normal(scale=1e-2, size=4)
        moved.intercept_ = svm.intercept_ + (0.1 if k % 2 else -0.1)
        assert moved.objective(X, y)["total"] > terms["total"]


def test_linear_svm_needs_both_labels():
    with pytest.raises(ValueError):
        LinearSVM().fit(np.ones((3, 2)), np.ones(3))


# -- hard-negative mining -------------------------------------------------------------------------

K, D = 2, 6
CENTRES = 3.0 * np.eye(K, D)


def make_images(rng, n_images=10, n_windows=30):
    """Per image: windows on each class's objects (high overlap), hard negatives half-way towards a
    class and easy background; overlaps (N, K) random below 0.3 for the negatives."""
    images = []
    for _ in range(n_images):
        kinds = rng.integers(0, 4, n_windows)  # 0, 1: on an object of that class; 2: hard; 3: easy
        feats = np.empty((n_windows, D), np.float32)
        overlaps = rng.uniform(0, 0.29, (n_windows, K))
        for w, kind in enumerate(kinds):
            if kind < K:
                feats[w] = CENTRES[kind] + rng.normal(scale=0.5, size=D)
                overlaps[w, kind] = rng.uniform(0.3, 1.0)  # 0.3 itself is not a negative
            elif kind == 2:
                feats[w] = 0.4 * CENTRES[rng.integers(K)] + rng.normal(scale=0.5, size=D)
            else:
                feats[w] = -CENTRES.sum(0) + rng.normal(scale=0.5, size=D)
        images.append((feats, overlaps))
    return images


def positives(rng, n=25):
    X = np.concatenate([blobs(rng, n, D, CENTRES[j], spread=0.5) for j in range(K)])
    return X, np.repeat(np.arange(K), n)


class CountingStream:
    """A one-shot generator over the images that counts what it yielded."""

    def __init__(self, images):
        self.yielded = 0
        self.generator = self._run(images)

    def _run(self, images):
        for item in images:
            self.yielded += 1
            yield item


class RecordingSVM(LinearSVM):
    fits: list = []

    def fit(self, X, y):
        super().fit(X, y)
        RecordingSVM.fits.append((X[y == 0].copy(), self.coef_.copy(), self.intercept_))
        return self


MINING = dict(C=1.0, retrain_limit=15)


def test_mining_follows_rcnn_rules_step_by_step(monkeypatch):
    """Replays the recorded models and checks each class's training set against R-CNN's rules."""
    rng = np.random.default_rng(4)
    X_pos, y_pos = positives(rng)
    images = make_images(rng)
    RecordingSVM.fits = []
    monkeypatch.setattr(hn, "LinearSVM", RecordingSVM)
    stream = CountingStream(images)
    model = HardNegativeSVMs(**MINING).fit(X_pos, y_pos, stream.generator, num_classes=K)

    assert stream.yielded == len(images) and next(stream.generator, None) is None
    assert model.n_images_ == len(images) and len(model.history_) == len(RecordingSVM.fits)
    key_of = {feats[w].astype(np.float32).tobytes(): (i, w)
              for i, (feats, _) in enumerate(images) for w in range(len(feats))}
    evicted_any = skipped_easy = limit_hit = False
    for j in range(K):
        runs = iter([(e, fit) for e, fit in zip(model.history_, RecordingSVM.fits) if e["class"] == j])
        cache, pending, coef, bias = set(), 0, None, None

        def expect_retrain(image, reason):
            nonlocal pending, coef, bias, evicted_any
            entry, (negatives, coef, bias) = next(runs)
            assert (entry["image"], entry["reason"]) == (image, reason)
            trained_on = {key_of[row.tobytes()] for row in negatives}
            assert len(trained_on) == len(negatives) == entry["n_neg"]  # no window twice
            assert trained_on == cache
            assert entry["n_added"] == pending and entry["n_pos"] == 25
            evicted = {k for k in cache if images[k[0]][0][k[1]] @ coef.astype(np.float32) + np.float32(bias) < -1.2}
            assert entry["n_evicted"] == len(evicted)
            evicted_any |= bool(evicted)
            cache.difference_update(evicted)
            pending = 0
            return trained_on

        for i, (feats, overlaps) in enumerate(images):
            is_negative = overlaps[:, j] < 0.3
            if coef is not None:
                hard = feats.astype(np.float64) @ coef + bias > -1.0001
                skipped_easy |= bool((is_negative & ~hard).any())
                is_negative &= hard
            cache |= {(i, w) for w in np.flatnonzero(is_negative)}
            pending += int(is_negative.sum())
            if coef is None and cache:
                trained_on = expect_retrain(i, "first")
            elif pending > 15:
                limit_hit = True
                trained_on = expect_retrain(i, "limit")
        if pending:
            trained_on = expect_retrain(len(images) - 1, "final")
        assert next(runs, None) is None
        np.testing.assert_allclose(model.coef_[j], coef, rtol=1e-6)
        assert {tuple(k) for k in model.negative_keys_[j]} == trained_on
    assert evicted_any and skipped_easy and limit_hit  # the data exercise every rule


def test_mining_retrains_on_limit_and_final_and_separates_held_out():
    rng = np.random.default_rng(5)
    X_pos, y_pos = positives(rng)
    model = HardNegativeSVMs(**MINING).fit(X_pos, y_pos, iter(make_images(rng, n_images=12)), num_classes=K)
    reasons = [e["reason"] for e in model.history_]
    assert reasons.count("first") == K and "limit" in reasons and reasons.count("final") <= K
    for entry in model.history_:
        assert set(entry) >= {"class", "image", "n_pos", "n_neg", "n_added", "n_evicted", "reg", "pos", "neg", "total"}
        assert all(isinstance(v, (int, float, str)) for v in entry.values())
    assert model.coef_.shape == (K, D) and model.intercept_.shape == (K,)
    X_test, y_test = positives(rng, n=50)
    held_out = make_images(rng, n_images=5)
    windows = np.concatenate([f for f, _ in held_out])
    overlaps = np.concatenate([o for _, o in held_out])
    scores = model.decision_function(windows)
    assert scores.shape == (len(windows), K)
    np.testing.assert_allclose(scores, windows @ model.coef_.T + model.intercept_, rtol=1e-5, atol=1e-5)
    for j in range(K):
        s_pos = model.decision_function(X_test[y_test == j])[:, j]
        s_neg = scores[overlaps[:, j] < 0.3, j]
        truth = np.r_[np.ones(len(s_pos)), np.zeros(len(s_neg))]
        assert roc_auc_score(truth, np.r_[s_pos, s_neg]) > 0.98
        assert ((np.r_[s_pos, s_neg] > 0) == truth).mean() > 0.9


def test_class_without_positives_scores_minus_infinity():
    rng = np.random.default_rng(6)
    X_pos, y_pos = positives(rng)
    images = [(f, np.hstack([o, np.zeros((len(o), 1))])) for f, o in make_images(rng, n_images=3)]
    with pytest.warns(RuntimeWarning, match=r"\[2\]"):
        model = HardNegativeSVMs(**MINING).fit(X_pos, y_pos, images, num_classes=3)
    assert np.all(model.coef_[2] == 0) and model.intercept_[2] == -np.inf
    assert len(model.negative_keys_[2]) == 0 and all(e["class"] != 2 for e in model.history_)
    scores = model.decision_function(X_pos)
    assert np.all(scores[:, 2] == -np.inf) and np.isfinite(scores[:, :2]).all()


def test_from_config_takes_every_svm_setting():
    cfg = SVMConfig(C=0.01, positive_weight=3.0, bias_multiplier=5.0, negative_overlap=0.2,
                    hard_negative_threshold=-0.9, evict_threshold=-1.5, retrain_limit=7, max_iter=99,
                    calibration_folds=4)
    params = HardNegativeSVMs.from_config(cfg).get_params()
    assert params == {**params, "C": 0.01, "positive_weight": 3.0, "bias_multiplier": 5.0,
                      "negative_overlap": 0.2, "hard_threshold": -0.9, "evict_threshold": -1.5,
                      "retrain_limit": 7, "max_iter": 99, "held_out_folds": 4}
    default = HardNegativeSVMs.from_config(SVMConfig()).get_params()
    # the estimator alone trains no fold models (they need each positive's image); the trainer does
    assert default == {**HardNegativeSVMs().get_params(), "held_out_folds": SVMConfig().calibration_folds}


def positive_images(y_pos, n_images):
    """Spread the positives over the stream's images, as the trainer's GT boxes are."""
    return np.arange(len(y_pos)) % n_images


def test_fold_models_are_the_final_caches_retrained_without_each_fold():
    rng = np.random.default_rng(8)
    X_pos, y_pos = positives(rng)
    images = make_images(rng, n_images=9)
    pos_images = positive_images(y_pos, 9)
    # nothing evicted: each class's final cache is exactly the negatives its final model saw
    model = HardNegativeSVMs(**MINING, evict_threshold=-1e9, held_out_folds=3).fit(
        X_pos, y_pos, iter(images), num_classes=K, pos_images=pos_images)
    assert model.fold_coef_.shape == (3, K, D) and model.fold_intercept_.shape == (3, K)
    for j in range(K):
        keys = model.negative_keys_[j]
        for f in range(3):
            pos = (y_pos == j) & (pos_images % 3 != f)
            neg = keys[keys[:, 0] % 3 != f]
            X = np.concatenate([X_pos[pos], np.stack([images[i][0][w] for i, w in neg])])
            y = np.r_[np.ones(pos.sum(), np.int64), np.zeros(len(neg), np.int64)]
            reference = LinearSVM(C=MINING["C"]).fit(X, y)
            np.testing.assert_allclose(model.fold_coef_[f, j], reference.coef_, rtol=1e-4, atol=1e-5)
            assert model.fold_intercept_[f, j] == pytest.approx(reference.intercept_, abs=1e-4)
    windows = images[4][0]
    np.testing.assert_allclose(model.held_out_decision_function(windows, 4),
                               windows @ model.fold_coef_[1].T + model.fold_intercept_[1], rtol=1e-5, atol=1e-5)


def test_held_out_margins_are_less_confident_than_in_sample_ones():
    """Many dimensions, few positives: the final SVMs fit their own positives past the margin,
    the fold models see them as new."""
    rng = np.random.default_rng(9)
    dim, n_images = 200, 12
    centre = np.zeros(dim, np.float32)
    centre[:5] = 1.0
    X_pos = (rng.normal(size=(36, dim)) + centre).astype(np.float32)
    y_pos = np.zeros(36, np.int64)
    images = [(rng.normal(size=(40, dim)).astype(np.float32), rng.uniform(0, 0.29, (40, 1)))
              for _ in range(n_images)]
    pos_images = positive_images(y_pos, n_images)
    model = HardNegativeSVMs(C=1.0, held_out_folds=3).fit(X_pos, y_pos, iter(images), num_classes=1,
                                                          pos_images=pos_images)
    in_sample = model.decision_function(X_pos)[:, 0]
    held_out = np.array([model.held_out_decision_function(x[None], i)[0, 0] for x, i in zip(X_pos, pos_images)])
    assert in_sample.mean() > 0.9 and held_out.mean() < in_sample.mean() - 0.5


def test_fold_models_need_the_positives_images_and_two_folds():
    rng = np.random.default_rng(10)
    X_pos, y_pos = positives(rng)
    with pytest.raises(ValueError, match="pos_images"):
        HardNegativeSVMs(held_out_folds=2).fit(X_pos, y_pos, iter(make_images(rng, 2)), num_classes=K)
    with pytest.raises(ValueError, match="at least 2"):
        HardNegativeSVMs(held_out_folds=1).fit(X_pos, y_pos, iter(make_images(rng, 2)), num_classes=K,
                                               pos_images=positive_images(y_pos, 2))


def test_mining_rejects_mismatched_shapes():
    rng = np.random.default_rng(7)
    X_pos, y_pos = positives(rng)
    with pytest.raises(ValueError, match="image 0"):
        HardNegativeSVMs().fit(X_pos, y_pos, [(np.zeros((4, D + 1)), np.zeros((4, K)))], num_classes=K)
    with pytest.raises(ValueError):
        HardNegativeSVMs().fit(X_pos, y_pos + 1, [], num_classes=K)


# -- feature norm -------------------------------------------------------------------------------

def test_feature_norm_scale_on_known_vectors():
    # norms 5 and 15 (3-4-0 and 9-12-0 triangles), mean over all vectors = (5 + 15 + 15) / 3
    chunks = [np.array([[3.0, 4.0, 0.0]]), np.array([[9.0, 12.0, 0.0], [0.0, 9.0, 12.0]])]
    assert feature_norm_scale(iter(chunks)) == pytest.approx(20.0 / (35.0 / 3))
    assert feature_norm_scale(np.concatenate(chunks), target=10.0) == pytest.approx(10.0 / (35.0 / 3))
    with pytest.raises(ValueError):
        feature_norm_scale([np.zeros((0, 3))])


def test_sample_indices_is_deterministic_and_bounded():
    counts = [0, 5, 300, 1000] + [50] * 300
    picks = sample_indices(counts, n_images=200, n_boxes=200, seed=3)
    again = sample_indices(counts, n_images=200, n_boxes=200, seed=3)
    assert [i for i, _ in picks] == [i for i, _ in again]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(picks, again))
    images = [i for i, _ in picks]
    assert images == sorted(set(images)) and 199 <= len(images) <= 200 and 0 not in images
    for i, boxes in picks:
        assert len(boxes) == min(200, counts[i]) and len(np.unique(boxes)) == len(boxes)
        assert boxes.min() >= 0 and boxes.max() < counts[i]
    assert [i for i, _ in sample_indices(counts, seed=4)] != images
    few = sample_indices([3, 7], n_images=200, n_boxes=5, seed=0)
    assert [(i, len(b)) for i, b in few] == [(0, 3), (1, 5)]


def test_difficult_objects_are_svm_positives_as_in_rcnn():
    """R-CNN's roidb (roidb_from_voc.m) makes every GT box a positive; ``use_difficult=False`` drops difficult ones."""
    gt = np.array([[0, 0, 39, 39], [100, 100, 139, 139], [50, 0, 89, 39]], dtype=float)
    record = ImageRecord("a", Path("a.jpg"), 200, 200, gt, np.array([0, 1, 1]), np.array([False, True, False]))
    windows = training_windows(record, np.array([[1, 1, 40, 40]], dtype=float), num_classes=2)
    assert SVMConfig().use_difficult
    assert windows.positives(SVMConfig().use_difficult).tolist() == [True, True, True, False]
    assert windows.positive_labels.tolist() == [0, 1, 1, -1]
    assert windows.positives(use_difficult=False).tolist() == [True, False, True, False]
    # a window on a difficult object is never a negative of its class, whichever the setting
    assert windows.overlaps[1, 1] == 1.0


# -- memory of the mining caches (docs/benchmarks.md, "SVM stage at VOC size") -------------------

def test_negative_store_gathers_compacts_and_keeps_dtype():
    rng = np.random.default_rng(8)
    store = NegativeStore(dim=3, dtype=np.float16, block_rows=5)
    parts = [rng.normal(size=(n, 3)).astype(np.float32) for n in (4, 0, 3, 6)]
    ids = [store.add(p, np.column_stack([np.full(len(p), i), np.arange(len(p))])) for i, p in enumerate(parts)]
    every = np.concatenate(parts)
    assert len(store) == 13 and [len(i) for i in ids] == [4, 0, 3, 6] and store.nbytes == 13 * 3 * 2
    out = np.empty((4, 3), np.float32)
    rows = np.array([1, 3, 4, 12])
    store.gather(rows, out)
    np.testing.assert_array_equal(out, every[rows].astype(np.float16).astype(np.float32))
    referenced = np.zeros(13, bool)
    referenced[[0, 4, 5, 9, 12]] = True
    remap = store.compact(referenced)
    assert len(store) == 5 and remap[[0, 4, 5, 9, 12]].tolist() == [0, 1, 2, 3, 4] and (remap[~referenced] == -1).all()
    store.gather(np.arange(5), out := np.empty((5, 3), np.float32))
    np.testing.assert_array_equal(out, every[referenced].astype(np.float16).astype(np.float32))
    assert store.keys(np.arange(5)).tolist() == [[0, 0], [2, 0], [2, 1], [3, 2], [3, 5]]


@pytest.mark.parametrize("cache_dtype", ["float32", "float16"])
def test_mining_memory_store_once_and_no_float64_copies(monkeypatch, cache_dtype):
    """Windows several classes cache are stored once, the positives are not copied per class, and
    a retrain's only large allocation is one float32 training matrix (no float64 copy)."""
    spec = SyntheticMining(num_images=12, windows=300, dim=200, num_classes=4, objects_per_image=2,
                           hard_fraction=0.05)
    X_pos, y_pos, images = synthetic_mining_data(spec)
    images = list(images)
    assert X_pos.dtype == np.float32 and all(f.dtype == np.float32 and f.shape == (300, 200) for f, _ in images)
    trained_on = []
    real_fit = LinearSVM.fit
    monkeypatch.setattr(LinearSVM, "fit", lambda self, X, y: trained_on.append((X.dtype, X.flags.c_contiguous,
                                                                                X.shape)) or real_fit(self, X, y))
    tracemalloc.start()
    svms = HardNegativeSVMs(cache_dtype=cache_dtype, retrain_limit=200).fit(X_pos, y_pos, iter(images),
                                                                            num_classes=spec.num_classes)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats = svms.store_stats_
    assert all(dtype == np.float32 and contiguous for dtype, contiguous, _ in trained_on)
    # a window several classes cache is one row of the store
    one = HardNegativeSVMs(cache_dtype=cache_dtype).fit(X_pos, y_pos, images[:1], num_classes=spec.num_classes)
    assert one.store_stats_["peak_rows"] <= 300 < one.store_stats_["peak_referenced"] / 3  # all cache image 0
    assert stats["peak_referenced"] > stats["peak_rows"] and stats["peak_bytes"] == stats["peak_rows"] * 200 * (
        4 if cache_dtype == "float32" else 2)
    # bound: the store, one float32 training matrix, a few per-image arrays and the caller's data
    largest = max(shape[0] for _, _, shape in trained_on) * 200 * 4
    per_image = 300 * 200 * 4
    assert peak < stats["peak_bytes"] + largest + 4 * per_image + 2**20
    # rows no class references are freed: at most compact_fraction of the store at any time
    assert stats["rows"] <= stats["referenced"] and svms.cache_dtype == cache_dtype


def test_duplicate_windows_have_equal_features_and_one_is_kept():
    """spp_train.m's dedup: windows on the same cells at the same scale pool to the same vector."""
    torch.manual_seed(0)
    extractor = SPPFeatureExtractor(build_backbone("zf5", pretrained=False),
                                    FeatureConfig(backbone="zf5", scales=(100, 160)))
    image = np.random.default_rng(9).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    maps = extractor.compute_maps(image)
    rng = np.random.default_rng(10)
    x0, y0 = rng.integers(0, 80, 300), rng.integers(0, 50, 300)
    boxes = np.column_stack([x0, y0, x0 + rng.integers(10, 50, 300), y0 + rng.integers(10, 50, 300)]).astype(float)
    boxes = np.concatenate([boxes, boxes[:50] + rng.integers(0, 2, (50, 4))])  # near copies, often the same cells
    scale_index, cells = extractor.window_cells(maps, boxes, image.shape[:2])
    kept = distinct_windows(scale_index, cells)
    keys = [tuple(k) for k in np.column_stack([scale_index.numpy(), cells.numpy()])]
    first = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    assert kept.tolist() == sorted(first.values()) and len(kept) < len(boxes)
    pooled = extractor.pool(maps, boxes, image.shape[:2]).numpy()
    for i, key in enumerate(keys):
        np.testing.assert_array_equal(pooled[i], pooled[first[key]])
    assert SVMConfig().dedup_windows and len(distinct_windows(scale_index[:0], cells[:0])) == 0
    # detection pools each group once: window i reads row rows[i] of the groups' vectors
    group_first, rows = window_groups(scale_index, cells)
    assert group_first.tolist() == kept.tolist() and [keys[group_first[r]] for r in rows] == keys
    distinct, window_rows = extractor.pool_distinct(maps, boxes, image.shape[:2])
    assert len(distinct) == len(kept)
    np.testing.assert_array_equal(distinct.numpy()[window_rows.numpy()], pooled)
    assert [len(part) for part in extractor.pool_distinct(maps, boxes[:0], image.shape[:2])] == [0, 0]


def test_benchmark_svm_command_reports_time_memory_and_cache(tmp_path, capsys):
    out = tmp_path / "svm.json"
    assert main(["benchmark-svm", "--num-images", "4", "--windows", "60", "--dim", "16", "--classes", "3",
                 "--cache-dtype", "float16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["spec"]["num_images"] == 4 and report["cache_dtype"] == "float16"
    assert report["peak_rss_bytes"] >= report["peak_rss_before_bytes"] > 0 and report["cpu_s"] >= 0
    assert report["store"]["peak_bytes"] == report["store"]["peak_rows"] * 16 * 2
    assert report["retrains"] == len(report["retrain_sizes"]) > 0
    assert "peak RSS" in capsys.readouterr().out
