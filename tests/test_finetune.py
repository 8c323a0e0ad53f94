"""Fine-tuning (recipe §6): the mini-batch sampler, the schedules, training, and kill-free resume equivalence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detection.core.config import FeatureConfig, FinetuneConfig
from features.backbones import build_backbone
from features.extractor import SPPFeatureExtractor
from features.finetune import (
    CHECKPOINT_NAME,
    FineTuner,
    WindowSampler,
    learning_rate,
    sample_minibatch,
    schedule_steps,
)
from features.head import FCHead
from features.projection import choose_scales

NUM_CLASSES = 4
DIM = 24
HIDDEN = 128


@pytest.fixture(autouse=True)
def one_thread():
    """These matrices are tiny: a second thread only adds synchronisation, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_windows(seed: int = 0, images: int = 40, windows: int = 150):
    """Per image: overlaps uniform in [0, 1], labels of the best GT (-1, no GT, where overlap is 0)."""
    rng = np.random.default_rng(seed)
    overlaps = [rng.random(windows) for _ in range(images)]
    for o in overlaps:
        o[rng.random(windows) < 0.1] = 0.0
    labels = [np.where(o > 0, rng.integers(0, NUM_CLASSES, windows), -1) for o in overlaps]
    return overlaps, labels


def test_minibatch_fractions_bands_and_targets():
    overlaps, labels = synthetic_windows()
    image, window, target = sample_minibatch(overlaps, labels, np.random.default_rng(0))
    assert len(image) == len(window) == len(target) == 128
    overlap = np.array([overlaps[i][w] for i, w in zip(image, window)])
    label = np.array([labels[i][w] for i, w in zip(image, window)])
    fg = target > 0
    assert fg.sum() == 32
    assert (overlap[fg] >= 0.5).all() and np.array_equal(target[fg], label[fg] + 1)
    assert ((overlap[~fg] >= 0.1) & (overlap[~fg] < 0.5)).all() and (target[~fg] == 0).all()
    assert len(set(zip(image.tolist(), window.tolist()))) == 128  # no window twice
    assert len(np.unique(image)) > 20  # drawn across many images, not a few


def test_minibatch_with_few_foreground_windows_fills_with_background():
    overlaps, labels = synthetic_windows()
    overlaps = [np.minimum(o, 0.45) for o in overlaps]
    overlaps[3][[5, 9]] = [0.5, 0.9]
    overlaps[17][0] = 0.7
    labels[17][0] = -1  # high overlap without a GT label is never foreground
    image, window, target = sample_minibatch(overlaps, labels, np.random.default_rng(0))
    assert len(target) == 128 and (target > 0).sum() == 2
    assert sorted(zip(image[target > 0].tolist(), window[target > 0].tolist())) == [(3, 5), (3, 9)]
    # background short too: the batch is what there is
    tiny = [np.array([0.2, 0.3, 0.6, 0.05])]
    _, window, target = sample_minibatch(tiny, [np.array([0, 1, 2, 0])], np.random.default_rng(0))
    assert sorted(window.tolist()) == [0, 1, 2] and target.tolist()[0] == 3
    _, _, target = sample_minibatch([np.array([0.2, 0.3, 0.45])], [np.array([0, 1, 2])], np.random.default_rng(0))
    assert sorted(target.tolist()) == [0, 0, 0]  # no foreground at all: background only
    with pytest.raises(ValueError, match="no foreground"):
        sample_minibatch([np.array([0.0, 0.05])], [np.array([-1, -1])], np.random.default_rng(0))


def test_minibatch_is_deterministic_and_covers_every_image():
    overlaps, labels = synthetic_windows()
    first = sample_minibatch(overlaps, labels, np.random.default_rng(7))
    again = sample_minibatch(overlaps, labels, np.random.default_rng(7))
    other = sample_minibatch(overlaps, labels, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])
    sampler, rng = WindowSampler(overlaps, labels), np.random.default_rng(0)
    seen = np.concatenate([sampler.sample(rng)[0] for _ in range(30)])
    assert set(seen.tolist()) == set(range(len(overlaps)))


@pytest.mark.parametrize("schedule, iterations, expected", [
    ("official", 90_000, {0: 1e-3, 29_999: 1e-3, 30_000: 1e-4, 59_999: 1e-4, 60_000: 1e-5, 89_999: 1e-5}),
    ("official", 2000, {0: 1e-3, 665: 1e-3, 666: 1e-4, 1332: 1e-4, 1333: 1e-5, 1999: 1e-5}),
    ("paper", 300_000, {0: 1e-4, 249_999: 1e-4, 250_000: 1e-5, 299_999: 1e-5}),
    ("paper", 2000, {0: 1e-4, 1665: 1e-4, 1666: 1e-5, 1999: 1e-5}),
])
def test_learning_rate_schedules(schedule, iterations, expected):
    config = FinetuneConfig(schedule=schedule, iterations=iterations)
    for iteration, lr in expected.items():
        assert learning_rate(config, iteration) == pytest.approx(lr, rel=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        learning_rate(FinetuneConfig(schedule="linear"), 0)


def test_base_lr_overrides_the_schedules_base_not_its_steps():
    config = FinetuneConfig(iterations=2000, base_lr=0.01)
    assert [learning_rate(config, i) for i in (0, 665, 666, 1333)] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])
    assert schedule_steps(config) == (666, 1333)


def test_schedule_steps():
    assert schedule_steps(FinetuneConfig(iterations=90_000)) == (30_000, 60_000)
    assert schedule_steps(FinetuneConfig(iterations=2000)) == (666, 1333)
    assert schedule_steps(FinetuneConfig(schedule="paper", iterations=2000)) == (1666,)


class SyntheticPool:
    """pool_fn of a separable problem: a class-dependent mean plus fixed per-window noise.

    Records each call; raises after ``fail_after`` calls to simulate an interrupted run.
    """

    def __init__(self, overlaps, labels, fail_after: int | None = None, seed: int = 0):
        rng = np.random.default_rng(seed)
        means = rng.normal(0, 5, (NUM_CLASSES + 1, DIM))
        self.features = []
        for o, l in zip(overlaps, labels):
            target = np.where((o >= 0.5) & (l >= 0), l + 1, 0)
            self.features.append(torch.from_numpy(means[target] + rng.normal(0, 1, (len(o), DIM))).float())
        self.fail_after = fail_after
        self.calls = []

    def __call__(self, image_idx, window_idx, scale_index):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls.append((image_idx, len(window_idx), scale_index))
        return self.features[image_idx][torch.from_numpy(window_idx)]


def new_head(seed: int = 0) -> FCHead:
    torch.manual_seed(seed)
    return FCHead(DIM, hidden=HIDDEN, num_classes=NUM_CLASSES)


def test_finetuner_learns_a_separable_problem(tmp_path):
    overlaps, labels = synthetic_windows()
    pool = SyntheticPool(overlaps, labels)
    config = FinetuneConfig(hidden=HIDDEN, iterations=200, checkpoint_every=100)
    lines = []
    tuner = FineTuner(new_head(), config, pool, tmp_path, log=lines.append)
    rng_before = torch.get_rng_state()
    head = tuner.fit(overlaps, labels, num_scales=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # dropout's RNG was forked, not consumed
    assert not head.training
    history = tuner.history_
    assert [h["iteration"] for h in history] == [50, 100, 150, 200] and len(lines) == 4
    assert [h["lr"] for h in history] == pytest.approx([1e-3, 1e-4, 1e-5, 1e-5])  # steps at 66 and 133
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.1
    assert history[-1]["fg_accuracy"] > 0.6
    # one pool_fn call per distinct image of a batch, with a random scale per window
    assert len(pool.calls) <= 200 * len(overlaps)
    assert all(s is not None and len(s) == n and 0 <= s.min() and s.max() < 3 for _, n, s in pool.calls)
    assert sum(n for _, n, _ in pool.calls) == 200 * 128
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_progress_bar_only_when_asked(capsys):
    overlaps, labels = synthetic_windows(images=5)
    config = FinetuneConfig(hidden=HIDDEN, iterations=60)
    quiet = lambda line: None
    FineTuner(new_head(), config, SyntheticPool(overlaps, labels), None, log=quiet).fit(overlaps, labels, 1)
    assert capsys.readouterr().err == ""
    FineTuner(new_head(), config, SyntheticPool(overlaps, labels), None, log=quiet, progress=True).fit(
        overlaps, labels, 1)
    err = capsys.readouterr().err
    assert "finetune" in err and "/60 [" in err and "loss=" in err


def test_label_smoothing_changes_the_loss_not_the_data():
    overlaps, labels = synthetic_windows(images=8)
    quiet = lambda line: None
    runs = {}
    for smoothing in (0.0, 0.1):
        config = FinetuneConfig(hidden=HIDDEN, iterations=50, label_smoothing=smoothing)
        pool = SyntheticPool(overlaps, labels)
        tuner = FineTuner(new_head(), config, pool, None, log=quiet)
        tuner.fit(overlaps, labels, num_scales=1)
        runs[smoothing] = (tuner.history_[-1]["loss"], [(image, n) for image, n, _ in pool.calls])
    assert runs[0.0][1] == runs[0.1][1]  # the same batches
    # smoothed targets put a floor under the loss: 0.1 of the mass on the other K classes
    assert runs[0.1][0] > runs[0.0][0] + 0.05


def test_finetuner_chosen_scale_passes_none():
    overlaps, labels = synthetic_windows(images=5)
    pool = SyntheticPool(overlaps, labels)
    config = FinetuneConfig(hidden=HIDDEN, iterations=3, scale_sampling="chosen")
    FineTuner(new_head(), config, pool, None, log=lambda line: None).fit(overlaps, labels, num_scales=5)
    assert all(s is None for _, _, s in pool.calls)
    # each 128-window batch spans all 5 images: one call per image per batch, its windows grouped
    assert [i for i, _, _ in pool.calls] == [0, 1, 2, 3, 4] * 3


def test_interrupted_then_resumed_run_equals_uninterrupted(tmp_path):
    overlaps, labels = synthetic_windows()
    config = FinetuneConfig(hidden=HIDDEN, iterations=120, checkpoint_every=25)
    quiet = lambda line: None
    whole = FineTuner(new_head(), config, SyntheticPool(overlaps, labels), tmp_path / "whole", log=quiet)
    expected = whole.fit(overlaps, labels, num_scales=2).state_dict()

    # a batch spans about 38 of the 40 images, one pool_fn call each: this fails near iteration 88,
    # between the checkpoint at 75 and the next log line at 100
    interrupted = FineTuner(new_head(), config, SyntheticPool(overlaps, labels, fail_after=3400),
                            tmp_path / "split", log=quiet)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(overlaps, labels, num_scales=2)
    lines = []
    # a new process builds the same initial head and finds the checkpoint
    resumed = FineTuner(new_head(), config, SyntheticPool(overlaps, labels), tmp_path / "split", log=lines.append)
    actual = resumed.fit(overlaps, labels, num_scales=2).state_dict()
    assert any("resuming at iteration 75/120" in line for line in lines)
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert resumed.history_ == whole.history_

    # a finished run resumes at its end: nothing recomputed, same weights
    done = FineTuner(new_head(), config, SyntheticPool(overlaps, labels, fail_after=0), tmp_path / "split",
                     log=quiet)
    assert all(torch.equal(v, expected[k]) for k, v in done.fit(overlaps, labels, num_scales=2).state_dict().items())


def test_retry_in_the_same_process_resumes_from_the_checkpoint(tmp_path):
    """fit() again on the same FineTuner, whose head now holds half-trained weights, still resumes."""
    overlaps, labels = synthetic_windows(images=8)
    config = FinetuneConfig(hidden=HIDDEN, iterations=40, checkpoint_every=10)
    quiet = lambda line: None
    expected = FineTuner(new_head(), config, SyntheticPool(overlaps, labels), None, log=quiet).fit(
        overlaps, labels, num_scales=2).state_dict()
    lines = []
    tuner = FineTuner(new_head(), config, SyntheticPool(overlaps, labels, fail_after=200), tmp_path, log=lines.append)
    with pytest.raises(KeyboardInterrupt):
        tuner.fit(overlaps, labels, num_scales=2)
    tuner.pool_fn = SyntheticPool(overlaps, labels)
    actual = tuner.fit(overlaps, labels, num_scales=2).state_dict()
    assert any("resuming at iteration 20/40" in line for line in lines)
    assert all(torch.equal(actual[k], expected[k]) for k in expected)


@pytest.mark.parametrize("change", ["seed", "initial head", "data", "scales"])
def test_checkpoint_of_another_run_is_ignored(tmp_path, change):
    overlaps, labels = synthetic_windows(images=8)
    config = FinetuneConfig(hidden=HIDDEN, iterations=10, checkpoint_every=5)
    FineTuner(new_head(), config, SyntheticPool(overlaps, labels), tmp_path, log=lambda line: None).fit(
        overlaps, labels, num_scales=2)
    head, num_scales = new_head(), 2
    if change == "seed":
        config = FinetuneConfig(hidden=HIDDEN, iterations=10, checkpoint_every=5, seed=1)
    elif change == "initial head":
        head = new_head(seed=1)  # e.g. fresh fc layers where the checkpoint's run widened pretrained ones
    elif change == "data":
        overlaps = overlaps[:-1]
        labels = labels[:-1]
    else:
        num_scales = 3
    lines = []
    pool = SyntheticPool(overlaps, labels)
    FineTuner(head, config, pool, tmp_path, log=lines.append).fit(overlaps, labels, num_scales=num_scales)
    assert any("ignoring" in line for line in lines) and len(pool.calls) > 0


def test_extractor_pools_at_given_scales():
    torch.manual_seed(0)
    backbone = build_backbone("zf5", pretrained=False)
    config = FeatureConfig(backbone="zf5", scales=(96, 160))
    extractor = SPPFeatureExtractor(backbone, config)
    image = np.random.default_rng(0).integers(0, 256, (120, 150, 3), dtype=np.uint8)
    maps = extractor.compute_maps(image)
    boxes = np.array([[0, 0, 149, 119], [10, 20, 60, 90], [30, 5, 140, 70], [50, 50, 80, 80]], dtype=np.float32)
    chosen = choose_scales(torch.from_numpy(boxes), (120, 150), config.scales)
    torch.testing.assert_close(extractor.pool(maps, boxes, (120, 150), scale_index=chosen),
                               extractor.pool(maps, boxes, (120, 150)), rtol=0, atol=0)
    # all windows at the second scale = a single-scale extractor on that scale's map
    single = SPPFeatureExtractor(backbone, FeatureConfig(backbone="zf5", scales=(160,)))
    torch.testing.assert_close(extractor.pool(maps, boxes, (120, 150), scale_index=np.ones(4, dtype=np.int64)),
                               single.pool(maps[1:], boxes, (120, 150)), rtol=0, atol=0)
    with pytest.raises(ValueError, match="scale_index"):
        extractor.pool(maps, boxes, (120, 150), scale_index=torch.tensor([0, 1, 2, 0]))
