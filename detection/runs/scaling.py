"""How the cost of training grows with the number of images: time, disk and peak memory per stage.

For each scale set and each size N, :func:`measure_scaling` trains on the first N training images
from nothing (its own empty cache and work directory), one stage at a time, and measures each
stage: wall and CPU seconds (this process and its finished children, the selective-search
workers), the peak resident memory of this process while the stage ran (sampled; it includes
what earlier stages and runs of the same process left allocated, so read it as an upper bound
and its rise within a run as the stage's own), and the bytes on disk after it (cache + work
directory). Then it tests on a fixed number of test images
(selective search, conv maps and detection: the per-image cost of testing, which does not depend
on N). :func:`fit_growth` fits each stage's time to ``a + b·N`` (and reports how far the largest
size sits from that line), :func:`extrapolate` carries the fit to another size, e.g. VOC 2007.

Each stage call builds its own :class:`~detection.training.trainer.TrainingRun` (backbone, image
hashes), a fraction of a second that is counted in the stage.
"""
from __future__ import annotations

import os
import resource
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from detection.core.cache import Cache
from detection.core.config import STAGES, SPPConfig
from detection.data.records import Dataset
from detection.runs.test import detect_dataset
from detection.training.stages import skip_reason
from detection.training.trainer import Trainer

TEST_STAGE = "test"  # selective search + conv maps + detection of the test images
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class StageCost:
    """One stage of one run: ``images`` training images (the test stage: ``test_images`` test images)."""

    scales: int
    images: int
    stage: str
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    disk_bytes: int
    test_images: int = 0


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class PeakMemory:
    """Context manager: the peak resident memory of this process while the block ran, sampled every
    ``interval`` seconds by a thread (``ru_maxrss`` only gives the peak since the process started)."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self.peak_bytes = current_rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, current_rss_bytes())


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished (waited-for) children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def disk_bytes(*directories: Path) -> int:
    """Bytes of the files under ``directories`` (apparent sizes)."""
    total = 0
    for directory in directories:
        for root, _, files in os.walk(directory):
            total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def _measured(action: Callable[[], object], scales: int, images: int, stage: str, directories: Sequence[Path],
              test_images: int = 0) -> tuple[object, StageCost]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    with PeakMemory() as memory:
        result = action()
    cost = StageCost(scales, images, stage, time.perf_counter() - wall, cpu_seconds() - cpu, memory.peak_bytes,
                     disk_bytes(*directories), test_images)
    return result, cost


def measure_scaling(config: SPPConfig, train_set: Dataset, test_set: Dataset, out_dir: str | Path,
                    sizes: Sequence[int], scale_sets: Sequence[tuple[int, ...]], test_images: int = 20,
                    device: str | None = None, workers: int = 1, progress: bool = False,
                    log: Callable[[str], None] = print) -> list[StageCost]:
    """Train from nothing on the first N images of ``train_set`` for each N in ``sizes`` and each
    scale set, stage by stage, then test on the first ``test_images`` of ``test_set`` (0: no test).

    Every (scale set, N) run gets an empty ``out_dir/<k>-scale/<N>/`` (cache and work directory),
    removed first if it exists, so nothing is read from an earlier run. Returns one
    :class:`StageCost` per stage run, in order.
    """
    for n in sizes:
        if not 1 <= n <= len(train_set):
            raise ValueError(f"size {n}: the training set has {len(train_set)} images")
    costs = []
    for scales in scale_sets:
        run_config = config.replace(features={"scales": tuple(scales)})
        for n in sizes:
            run_dir = Path(out_dir) / f"{len(scales)}-scale" / str(n)
            shutil.rmtree(run_dir, ignore_errors=True)
            directories = (run_dir / "cache", run_dir / "work")
            trainer = Trainer(run_config, directories[1], device=device, workers=workers, progress=progress,
                              log=lambda _line: None, cache_dir=directories[0])
            subset = train_set.first(n)
            detector = None
            for stage in STAGES:
                if skip_reason(stage, run_config):
                    continue
                detector, cost = _measured(lambda: trainer.train(subset, stages=(stage,)), len(scales), n, stage,
                                           directories)
                costs.append(cost)
                log(f"scaling: {len(scales)} scale(s), {n} images, {stage}: {cost.wall_s:.1f} s wall, "
                    f"{cost.cpu_s:.1f} s CPU, peak {cost.peak_rss_bytes / 2**30:.2f} GiB, "
                    f"disk {cost.disk_bytes / 2**20:.1f} MiB")
            if test_images:
                tested = test_set.first(test_images)
                _, cost = _measured(lambda: detect_dataset(detector, tested, Cache(directories[0]), workers=workers,
                                                           progress=progress),
                                    len(scales), n, TEST_STAGE, directories, len(tested))
                costs.append(cost)
                log(f"scaling: {len(scales)} scale(s), test on {len(tested)} images: {cost.wall_s:.1f} s wall, "
                    f"{cost.cpu_s:.1f} s CPU, peak {cost.peak_rss_bytes / 2**30:.2f} GiB")
    return costs


@dataclass(frozen=True)
class Growth:
    """``seconds ≈ fixed_s + per_image_s · N`` fitted to one stage's CPU times over the sizes;
    ``largest_ratio``: measured / fitted at the largest size (> 1: faster than linear there)."""

    scales: int
    stage: str
    fixed_s: float
    per_image_s: float
    largest_ratio: float


def fit_growth(costs: Sequence[StageCost]) -> list[Growth]:
    """Least-squares ``a + b·N`` of each (scales, training stage)'s CPU seconds over its sizes
    (the test stage is per test image, not per training image, and is left out)."""
    growths = []
    keys = dict.fromkeys((c.scales, c.stage) for c in costs if c.stage != TEST_STAGE)
    for scales, stage in keys:
        rows = sorted((c.images, c.cpu_s) for c in costs if (c.scales, c.stage) == (scales, stage))
        n, seconds = np.array([r[0] for r in rows], float), np.array([r[1] for r in rows], float)
        if len(np.unique(n)) < 2:
            continue
        per_image, fixed = np.polyfit(n, seconds, 1)
        fitted = fixed + per_image * n[-1]
        growths.append(Growth(scales, stage, float(fixed), float(per_image),
                              float(seconds[-1] / fitted) if fitted > 0 else float("nan")))
    return growths


def extrapolate(growth: Growth, images: int) -> float:
    """CPU seconds of the stage at ``images`` training images, on the fitted line."""
    return growth.fixed_s + growth.per_image_s * images


def costs_table(costs: Sequence[StageCost]) -> str:
    """Markdown: one row per measured stage run."""
    lines = ["| scales | images | stage | wall s | CPU s | peak RSS (GiB) | disk after (MiB) |",
             "|---:|---:|---|---:|---:|---:|---:|"]
    for c in costs:
        stage = f"test ({c.test_images} images)" if c.stage == TEST_STAGE else c.stage
        lines.append(f"| {c.scales} | {c.images} | {stage} | {c.wall_s:.1f} | {c.cpu_s:.1f} | "
                     f"{c.peak_rss_bytes / 2**30:.2f} | {c.disk_bytes / 2**20:.1f} |")
    return "\n".join(lines)


def growth_table(growths: Sequence[Growth], targets: dict[str, int]) -> str:
    """Markdown: each stage's fitted line and its extrapolation to each of ``targets`` (name -> images)."""
    names = list(targets)
    lines = ["| scales | stage | fixed CPU s | CPU s per image | measured / fit at largest size | "
             + " | ".join(f"CPU h at {name}" for name in names) + " |",
             "|---:|---|---:|---:|---:|" + "---:|" * len(names)]
    for g in growths:
        lines.append(f"| {g.scales} | {g.stage} | {g.fixed_s:.1f} | {g.per_image_s:.3f} | {g.largest_ratio:.2f} | "
                     + " | ".join(f"{extrapolate(g, targets[name]) / 3600:.1f}" for name in names) + " |")
    return "\n".join(lines)


def costs_to_json(costs: Sequence[StageCost]) -> list[dict]:
    return [asdict(c) for c in costs]
