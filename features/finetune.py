"""Fine-tuning the fc head on SPP vectors from cached conv maps, resumable (recipe §6).

Section numbers (§N) refer to docs/recipe.md. The conv layers are frozen, so a training
window costs one SPP pooling of its image's cached map; :class:`FineTuner` asks the caller for
those vectors (``pool_fn``) one image at a time and trains the head on 128-window mini-batches.

What follows the official code (ShaoqingRen/SPP_net, ``finetuning/spp_finetune_voc.m`` and
``model-defs/pascal_finetune_fc_spm_{solver,train}.prototxt``):

* mini-batches of 128 windows, 32 foreground (max IoU >= 0.5, target = class + 1) and 96
  background (max IoU in [0.1, 0.5), target 0), drawn from many images, a random scale per window;
* SGD, momentum 0.9, weight decay 5e-4, every layer's bias at twice the weight's learning rate
  (``blobs_lr: 1, 2``; fc8 too, where R-CNN used 10, 20); softmax loss over K + 1 classes;
* the step schedule: 1e-3, then 1e-4 after 30k, then 1e-5 after 60k iterations (``lr_policy:
  "vstep"``, three 30k phases). The solver's ``max_iter`` is 200k and the script keeps the
  snapshot with the lowest held-out error, so the official run went on at 1e-5 past 90k; we take
  the 90k of the three phases as the schedule's length. The paper's schedule instead is 1e-4 for
  250k and 1e-5 for 50k more. Either is compressed to ``config.iterations`` by putting each step
  at floor(step · iterations / length).

Where we differ: biases get no weight decay by default (``bias_decay_multiplier`` 0, as R-CNN's
layers and the official fc8; the official fc6/fc7 leave it unset, which Caffe reads as full
decay). PyTorch's SGD keeps the momentum buffer in gradient units and multiplies by the current
learning rate, Caffe keeps it in step units; the two agree except for the few hundred iterations
after a learning-rate step. Windows are drawn uniformly over all candidate windows, where the
official code first takes a random subset of images holding ten times the windows it needs.
"""
from __future__ import annotations

import bisect
import dataclasses
import hashlib
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from detection.core.cache import atomic_write_bytes
from detection.core.config import SCHEDULES, FinetuneConfig, fingerprint
from detection.core.hashing import state_hash
from features.head import FCHead

LR_GAMMA = 0.1
LOG_EVERY = 50  # iterations per logged (and recorded) average
CHECKPOINT_NAME = "finetune_checkpoint.pt"

PoolFn = Callable[[int, np.ndarray, np.ndarray | None], torch.Tensor]


def schedule_steps(config: FinetuneConfig) -> tuple[int, ...]:
    """The iterations (0-based) from which the learning rate is ×0.1 lower, scaled to ``config.iterations``."""
    _, steps, length = SCHEDULES[config.schedule]
    return tuple(step * config.iterations // length for step in steps)


def learning_rate(config: FinetuneConfig, iteration: int) -> float:
    """Base learning rate (weights; biases get ×``bias_lr_multiplier``) at 0-based ``iteration``.

    It starts at ``config.base_lr``, or the schedule's when that is None.
    """
    base = SCHEDULES[config.schedule][0] if config.base_lr is None else config.base_lr
    return base * LR_GAMMA ** bisect.bisect_right(schedule_steps(config), iteration)


class WindowSampler:
    """The foreground and background windows of a set of images, and 128-window draws from them.

    Built once from all training images, so each draw costs O(batch) rather than a pass over
    every window.

    Attributes:
        image, window, target: (M,) int64 per candidate window: its image, its index within the
            image, and its training target (0 background, label + 1 foreground).
        num_fg: the first ``num_fg`` candidates are the foreground ones.
    """

    def __init__(self, overlaps: list[np.ndarray], labels: list[np.ndarray], fg_threshold: float = 0.5,
                 bg_low: float = 0.1, bg_high: float = 0.5):
        if len(overlaps) != len(labels) or any(len(o) != len(l) for o, l in zip(overlaps, labels)):
            raise ValueError("overlaps and labels must hold one array per image, of equal lengths")
        sizes = np.array([len(o) for o in overlaps], dtype=np.int64)
        image = np.repeat(np.arange(len(sizes)), sizes)
        window = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        overlap = np.concatenate([np.zeros(0)] + [np.asarray(o, np.float64).reshape(-1) for o in overlaps])
        label = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(l, np.int64).reshape(-1) for l in labels])
        # a window without any GT box (label -1) can never be foreground, whatever its overlap says
        fg = (overlap >= fg_threshold) & (label >= 0)
        bg = ~fg & (overlap >= bg_low) & (overlap < bg_high)
        if not (fg.any() or bg.any()):
            raise ValueError(f"no foreground (IoU >= {fg_threshold}) or background (IoU in [{bg_low}, {bg_high})) "
                             "windows to fine-tune on")
        keep = np.concatenate([np.flatnonzero(fg), np.flatnonzero(bg)])
        self.image, self.window = image[keep], window[keep]
        self.target = np.where(fg[keep], label[keep] + 1, 0)
        self.num_fg = int(fg.sum())

    @property
    def num_bg(self) -> int:
        return len(self.target) - self.num_fg

    def sample(self, rng: np.random.Generator, batch_size: int = 128,
               fg_fraction: float = 0.25) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One mini-batch: (B,) image index, (B,) window index, (B,) target; foreground first.

        round(fg_fraction · batch_size) foreground windows, or all there are if fewer; background
        fills the rest of the batch (B < batch_size only when background runs out too). No
        window is drawn twice within a batch.
        """
        n_fg = min(round(fg_fraction * batch_size), self.num_fg)
        n_bg = min(batch_size - n_fg, self.num_bg)
        picks = np.concatenate([rng.choice(self.num_fg, n_fg, replace=False),
                                self.num_fg + rng.choice(self.num_bg, n_bg, replace=False)])
        return self.image[picks], self.window[picks], self.target[picks]

    def digest(self) -> str:
        """A hash of the candidates: two samplers with equal digests draw equal batches from equal RNGs."""
        h = hashlib.sha1()
        for array in (self.image, self.window, self.target, np.array([self.num_fg])):
            h.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]


def sample_minibatch(overlaps: list[np.ndarray], labels: list[np.ndarray], rng: np.random.Generator,
                     batch_size: int = 128, fg_fraction: float = 0.25, fg_threshold: float = 0.5,
                     bg_low: float = 0.1, bg_high: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fine-tuning mini-batch drawn uniformly from the windows of all given images (§6).

    Args:
        overlaps: per image, (N_i,) max IoU of each window with any GT box.
        labels: per image, (N_i,) class 0..K-1 of that best GT box, -1 where there is none.
        rng: the source of all randomness (seed it for a reproducible draw).

    Returns:
        image_idx (B,), window_idx (B,), target (B,) int64: foreground (overlap >= fg_threshold,
        target = label + 1) first, then background (bg_low <= overlap < bg_high, target 0). See
        :meth:`WindowSampler.sample` for the counts; a fine-tuning run builds one
        :class:`WindowSampler` and draws from it instead of calling this per batch.
    """
    sampler = WindowSampler(overlaps, labels, fg_threshold, bg_low, bg_high)
    return sampler.sample(rng, batch_size, fg_fraction)


class FineTuner:
    """SGD on an :class:`FCHead` over SPP vectors of sampled windows, checkpointed and resumable.

    Args:
        head: the head to train (with fc8); trained in place and returned by :meth:`fit`.
        config: fine-tuning settings (§6).
        pool_fn: ``pool_fn(image_idx, window_idx (n,), scale_index (n,) or None) -> (n, in_dim)``,
            the SPP vectors of those windows of training image ``image_idx`` (flipped images are
            just more images). ``scale_index`` indexes the feature scales, drawn at random per
            window when ``config.scale_sampling == "random"``; None asks for the §4 rule's scale.
            Called once per distinct image of each mini-batch.
        checkpoint_dir: where the checkpoint lives; None = no checkpoints, no resuming.
        device: where the head trains.
        log: receives one progress line every ``LOG_EVERY`` iterations.
        progress: show a progress bar (iterations, rate, ETA, the last logged loss) on stderr.

    Attributes:
        history_: after :meth:`fit`, one dict per ``LOG_EVERY`` iterations (and the last):
            iteration (completed), lr (weights' rate at the last iteration), loss, accuracy and
            fg_accuracy (over foreground windows), averaged over those iterations.
    """

    def __init__(self, head: FCHead, config: FinetuneConfig, pool_fn: PoolFn, checkpoint_dir: Path | None,
                 device: torch.device | str = "cpu", log: Callable[[str], None] = print,
                 progress: bool = False):
        if head.fc8 is None:
            raise ValueError("the head to fine-tune needs an fc8 (build it with num_classes)")
        self.head = head
        # taken now: after an interrupted fit() the head holds half-trained weights
        self.initial_digest = state_hash(head)
        self.config = config
        self.pool_fn = pool_fn
        self.checkpoint_path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT_NAME
        self.device = torch.device(device)
        self.log = log
        self.progress = progress
        self.history_: list[dict] = []

    def fit(self, overlaps: list[np.ndarray], labels: list[np.ndarray], num_scales: int) -> FCHead:
        """Train for ``config.iterations`` iterations, resuming from the checkpoint if it is this run's.

        ``overlaps``/``labels`` as for :func:`sample_minibatch`, one entry per training image
        (flips included) in ``pool_fn``'s numbering; ``num_scales``: how many feature scales
        ``pool_fn`` can pool from. Returns the head, in eval mode on the device.

        An interrupted run resumed by a new FineTuner with the same arguments ends with the
        same weights, bit for bit on the CPU: the checkpoint holds the head, the optimizer, and
        the numpy and torch RNG states (batches and dropout).
        """
        cfg = self.config
        if num_scales < 1:
            raise ValueError(f"num_scales must be at least 1, got {num_scales}")
        sampler = WindowSampler(overlaps, labels, cfg.fg_threshold, cfg.bg_low, cfg.bg_high)
        if sampler.target.max() > self.head.num_classes:
            raise ValueError(f"labels reach class {sampler.target.max() - 1}, "
                             f"but the head has {self.head.num_classes} classes")
        run = self._run_fingerprint(sampler, num_scales)
        self.head.to(self.device)
        optimizer = self._optimizer()
        rng = np.random.default_rng(cfg.seed)
        self.history_ = []
        # dropout draws from torch's global generators: fork them so the caller's stream is untouched
        with torch.random.fork_rng(devices=_cuda_indices(self.device)):
            _seed_torch(cfg.seed, self.device)
            start, meter = self._resume(run, optimizer, rng)
            self.head.train()
            bar = tqdm(total=cfg.iterations, initial=start, desc="finetune", unit="it", leave=False,
                       disable=not self.progress)
            with bar:
                for iteration in range(start, cfg.iterations):
                    lr = learning_rate(cfg, iteration)
                    for group in optimizer.param_groups:
                        group["lr"] = lr * group["lr_mult"]
                    meter.add(*self._step(optimizer, sampler, rng, num_scales))
                    done = iteration + 1
                    if done % LOG_EVERY == 0 or done == cfg.iterations:
                        self._record(done, lr, meter)
                        bar.set_postfix(loss=f"{self.history_[-1]['loss']:.3f}")  # shown at once: once per logged interval
                        meter = _Meter()
                    if self.checkpoint_path is not None and (done % cfg.checkpoint_every == 0
                                                             or done == cfg.iterations):
                        self._save(run, done, optimizer, rng, meter)
                    bar.update()
        return self.head.eval()

    # -- one iteration -------------------------------------------------------------------------
    def _step(self, optimizer: torch.optim.Optimizer, sampler: WindowSampler, rng: np.random.Generator,
              num_scales: int) -> tuple[float, int, int, int, int]:
        """Draw, pool, one SGD step -> (mean loss, correct, windows, correct foreground, foreground)."""
        cfg = self.config
        image_idx, window_idx, target = sampler.sample(rng, cfg.batch_size, cfg.fg_fraction)
        scale_index = rng.integers(num_scales, size=len(target)) if cfg.scale_sampling == "random" else None
        x = self._pooled(image_idx, window_idx, scale_index)
        y = torch.from_numpy(target).to(self.device)
        logits = self.head(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hit = logits.detach().argmax(dim=1) == y
        is_fg = y > 0
        return loss.item(), int(hit.sum()), len(y), int((hit & is_fg).sum()), int(is_fg.sum())

    def _pooled(self, image_idx: np.ndarray, window_idx: np.ndarray,
                scale_index: np.ndarray | None) -> torch.Tensor:
        """(B,) windows -> (B, in_dim) float32 on the device, one ``pool_fn`` call per distinct image."""
        order = np.argsort(image_idx, kind="stable")
        images, starts = np.unique(image_idx[order], return_index=True)
        ends = np.append(starts[1:], len(order))
        parts = [self.pool_fn(int(image), window_idx[order[lo:hi]],
                              None if scale_index is None else scale_index[order[lo:hi]])
                 for image, lo, hi in zip(images, starts, ends)]
        x = torch.empty((len(order), self.head.in_dim), dtype=torch.float32, device=self.device)
        x[torch.from_numpy(order).to(self.device)] = torch.cat(parts).to(self.device, torch.float32)
        return x

    def _optimizer(self) -> torch.optim.SGD:
        """SGD with the weights and the biases in two groups: Caffe's per-blob lr and decay multipliers."""
        cfg = self.config
        named = list(self.head.named_parameters())
        weights = [p for name, p in named if not name.endswith("bias")]
        biases = [p for name, p in named if name.endswith("bias")]
        return torch.optim.SGD(
            [{"params": weights, "lr_mult": 1.0, "weight_decay": cfg.weight_decay},
             {"params": biases, "lr_mult": cfg.bias_lr_multiplier,
              "weight_decay": cfg.weight_decay * cfg.bias_decay_multiplier}],
            lr=learning_rate(cfg, 0), momentum=cfg.momentum)

    def _record(self, done: int, lr: float, meter: _Meter) -> None:
        entry = {"iteration": done, "lr": lr, **meter.averages()}
        self.history_.append(entry)
        self.log(f"finetune {done}/{self.config.iterations}: lr {lr:.1e}, loss {entry['loss']:.4f}, "
                 f"accuracy {entry['accuracy']:.3f}, fg accuracy {entry['fg_accuracy']:.3f}")

    # -- checkpoints ---------------------------------------------------------------------------
    def _run_fingerprint(self, sampler: WindowSampler, num_scales: int) -> str:
        """What a checkpoint must match to be resumed: settings, the head's initial weights, data, scales.

        The initial weights tell a widened pretrained head from a fresh one, which no setting in
        ``config`` records.
        """
        return fingerprint(self.config.weight_settings(), self.initial_digest, num_scales, sampler.digest())

    def _save(self, run: str, done: int, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
              meter: _Meter) -> None:
        state = {
            "run": run,
            "iteration": done,
            "head": self.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "numpy_rng": rng.bit_generator.state,
            "torch_rng": _torch_rng_state(self.device),
            "meter": dataclasses.asdict(meter),
            "history": self.history_,
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.checkpoint_path, buffer.getvalue())

    def _resume(self, run: str, optimizer: torch.optim.Optimizer, rng: np.random.Generator) -> tuple[int, _Meter]:
        """Restore this run's checkpoint if there is one -> (iterations already done, sums since the last log)."""
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return 0, _Meter()
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state["run"] != run:
            self.log(f"finetune: ignoring {self.checkpoint_path}, written by a run with other settings or data")
            return 0, _Meter()
        self.head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        _set_torch_rng_state(state["torch_rng"], self.device)
        self.history_ = list(state["history"])
        self.log(f"finetune: resuming at iteration {state['iteration']}/{self.config.iterations}")
        return state["iteration"], _Meter(**state["meter"])


@dataclasses.dataclass
class _Meter:
    """Sums over the iterations since the last log line."""

    iterations: int = 0
    loss: float = 0.0
    correct: int = 0
    count: int = 0
    fg_correct: int = 0
    fg_count: int = 0

    def add(self, loss: float, correct: int, count: int, fg_correct: int, fg_count: int) -> None:
        self.iterations += 1
        self.loss += loss
        self.correct += correct
        self.count += count
        self.fg_correct += fg_correct
        self.fg_count += fg_count

    def averages(self) -> dict[str, float]:
        return {"loss": self.loss / max(self.iterations, 1), "accuracy": self.correct / max(self.count, 1),
                "fg_accuracy": self.fg_correct / max(self.fg_count, 1)}


def _cuda_indices(device: torch.device) -> list[int]:
    """The CUDA devices whose generators ``fork_rng`` must fork: the training device's, if CUDA."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _seed_torch(seed: int, device: torch.device) -> None:
    """Seed the generators dropout uses on ``device``: the CPU one, and the device's own on CUDA."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _torch_rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_torch_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Restore saved generator states; a CUDA one saved by a CPU run is absent and stays freshly seeded."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
