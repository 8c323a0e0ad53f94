"""SPP-net against R-CNN on the same images, proposals and hardware (``sppnet benchmark``, recipe §11).

Three detectors share one backbone, one set of SVMs and one box regressor and differ only in how
window features are made: SPP-net at one scale, SPP-net at several scales (the paper's five), and
R-CNN (:mod:`features.rcnn`: every window cropped, warped and run through the conv layers). Each
image's proposals are computed once, timed on their own, and padded (repeated cyclically) or cut
to exactly P windows, so every mode does the work of P windows per image.

Per image and mode the steps of :class:`~detection.detector.Detector` are timed separately:

* ``conv``: SPP: resize + conv layers at every scale (``compute_maps``); R-CNN: normalising the
  image plus, for every batch of windows, crop + warp + conv layers;
* ``pool_fc``: projection + spatial pyramid pooling (+ the fc head when the SVMs read fc
  features) (``features``, less R-CNN's conv);
* ``svm_nms_bbox``: SVM scores, threshold, NMS, box regression, NMS (``score`` + ``postprocess``);
* ``total``: their sum; proposals are reported apart and never included;
* ``cpu``: the same steps in the process's CPU time, all threads: the work done, whatever else
  shares the CPU (wall time also counts waiting for a core); ``cpu_time`` holds its ratios;
* peak memory per mode: the process's peak resident set (Linux, reset per mode through
  ``/proc/self/clear_refs``) and ``torch.cuda.max_memory_allocated``.

On a GPU every timed section starts and ends with ``torch.cuda.synchronize``. Before timing,
each mode runs ``warmup`` untimed detections of the first image (R-CNN: one batch of its
windows, the same work its timed run repeats batch after batch).

Without a trained model the detector is *untrained*: the backbone's random initialisation (or
``--backbone-weights``), VOC's 20 classes, random SVMs and zero box regressors. Timing does not
depend on the weights, except through how many windows pass the SVM threshold into NMS: so the
features are scaled to the recipe's mean norm of 20 and each random SVM's bias is set so that
a fraction ``pass_fraction`` of the first image's windows pass -1.5 (default ``PASS_FRACTION``). A trained model keeps its own
scale in the modes it was trained in; in the others its features are rescaled to norm 20 the same
way (its SVMs were not trained on them: only the timing means anything there).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import platform
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from detection.core.config import FIVE_SCALES, PASS_FRACTION, SINGLE_SCALE, SPPConfig
from detection.detector import Detector
from detection.core.errors import SppnetError
from detection.data.voc import VOC_CLASSES
from features.backbones import build_backbone
from features.extractor import build_extractor
from features.rcnn import RCNNFeatureExtractor
from features.spp import spp_output_dim
from proposals.selective_search import selective_search
from svm.bbox_regression import BoxRegressor

MODES = ("spp_1scale", "spp_5scale", "rcnn")
STEPS = ("conv", "pool_fc", "svm_nms_bbox")
FEATURE_NORM_TARGET = 20.0  # recipe §7


class BenchmarkError(SppnetError, ValueError):
    """Benchmark inputs that cannot be used; the message says which."""


@dataclass(frozen=True)
class BenchmarkSettings:
    """What to run. ``rcnn_images``: how many of the images R-CNN runs on (None: all of them)."""

    proposals: int = 2000
    warmup: int = 1
    single_scale: tuple[int, ...] = SINGLE_SCALE
    multi_scale: tuple[int, ...] = FIVE_SCALES
    rcnn_images: int | None = None
    rcnn_batch_size: int | None = None  # None: the model's config (128 by default)
    pass_fraction: float = PASS_FRACTION  # untrained detector only


# -- timing and memory ----------------------------------------------------------------------------

class Stopwatch:
    """Wall time accumulated per named section; on CUDA each section is synchronised at both ends.

    ``cpu_seconds`` holds the process's CPU time (all threads) per section: on a CPU shared with
    other jobs it measures the work done, where wall time also counts waiting for a core.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.cpu_seconds: dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        self._sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        yield
        self._sync()
        self.seconds[name] += time.perf_counter() - start
        self.cpu_seconds[name] += time.process_time() - cpu_start


def reset_peak_memory(device: torch.device) -> None:
    """Start new peaks: the process's peak RSS (Linux: ``/proc/self/clear_refs``) and CUDA's max allocated."""
    with contextlib.suppress(OSError):  # elsewhere the CPU peak is the process's since it started
        Path("/proc/self/clear_refs").write_text("5")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float | None]:
    """Peak CPU resident set (``VmHWM``) and peak CUDA memory allocated since the last reset, in MiB."""
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                cpu = int(line.split()[1]) / 1024  # kB
    gpu = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return {"peak_cpu_rss_mb": cpu, "peak_gpu_mb": gpu}


def describe_device(device: torch.device) -> str:
    """'cpu: <model>, N cores, T torch threads' or 'cuda: <GPU name>'."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        model = names[0] if names else model
    return f"cpu: {model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


# -- inputs ---------------------------------------------------------------------------------------

def fixed_proposals(boxes: np.ndarray, count: int) -> np.ndarray:
    """(N, 4) proposals -> exactly (count, 4): the first ``count``, repeated cyclically if N < count."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise BenchmarkError("selective search found no windows in an image; cannot pad its proposals")
    return np.resize(boxes, (count, 4)) if len(boxes) < count else boxes[:count]


def untrained_detector(config: SPPConfig, device: torch.device | str, seed: int = 0,
                       classes: tuple[str, ...] = VOC_CLASSES) -> Detector:
    """A detector of ``config``'s backbone (random init unless ``backbone_weights``) with random SVMs
    and zero box regressors, for timing without training. Its scales are fixed by :func:`calibrate`."""
    torch.manual_seed(seed)
    config = config.replace(svm={"feature_layer": "pool5"})
    cfg = config.features
    backbone = build_backbone(cfg.backbone, cfg.backbone_weights, pretrained=False)
    dim = spp_output_dim(backbone.channels, cfg.pyramid_levels)
    rng = np.random.default_rng(seed)
    # weights ~ N(0, (1/20)²): on features of norm 20 the scores spread with a std of about 1
    svm_weights = rng.normal(0.0, 1.0 / FEATURE_NORM_TARGET, (len(classes), dim))
    regressor = BoxRegressor(ridge_lambda=config.bbox.ridge_lambda)
    regressor.coef_ = np.zeros((len(classes), dim, 4))
    regressor.intercept_ = np.zeros((len(classes), 4))
    regressor.n_samples_ = np.zeros(len(classes), dtype=np.int64)
    return Detector(config, classes, backbone, svm_weights, np.zeros(len(classes)), 1.0, regressor,
                    device=device, bbox_feature_scale=1.0)


def mode_detector(detector: Detector, mode: str, scales: tuple[int, ...], rcnn_batch_size: int | None) -> Detector:
    """The same detector (backbone, head, SVMs, regressor shared) with feature mode and scales replaced, uncached."""
    features = {"mode": mode, "scales": scales}
    if rcnn_batch_size is not None:
        features["rcnn_batch_size"] = rcnn_batch_size
    clone = copy.copy(detector)
    clone.config = detector.config.replace(features=features)
    clone.extractor = build_extractor(detector.backbone, clone.config.features, detector.device)
    return clone


def calibrate(detector: Detector, image: np.ndarray, boxes: np.ndarray, pass_fraction: float | None) -> None:
    """Scale the SVM features to mean norm 20 on these windows and, given a ``pass_fraction``
    (random SVMs), set the biases so that this fraction of the windows pass the score threshold."""
    features = detector.features(detector.compute_maps(image), boxes, image.shape[:2])
    norm = float(features.svm.norm(dim=1).mean())  # unscaled: ``score`` applies the scale
    if norm > 0:
        detector.feature_scale = FEATURE_NORM_TARGET / norm
    if pass_fraction is not None:
        margins = detector.score(features) - detector.svm_bias  # (N, K)
        detector.svm_bias = detector.config.test.score_threshold - torch.quantile(margins, 1 - pass_fraction, dim=0)


# -- running --------------------------------------------------------------------------------------

def time_detection(detector: Detector, image: np.ndarray, boxes: np.ndarray, watch: Stopwatch) -> None:
    """Detect once, adding each step's time to ``watch`` (``conv``, ``features``, ``svm_nms_bbox``)."""
    size = image.shape[:2]
    with watch.section("conv"):
        maps = detector.compute_maps(image)
    with watch.section("features"):
        features = detector.features(maps, boxes, size)
    with watch.section("svm_nms_bbox"):
        detector.postprocess(boxes, detector.score(features), features, size)


def run_mode(detector: Detector, images: list[np.ndarray], proposals: list[np.ndarray], warmup: int,
             recalibrate: bool, pass_fraction: float | None) -> dict:
    """Calibrate, warm up and time one mode -> per-image seconds of each step, total and peak memory.

    R-CNN calibrates and warms up on one batch of windows, the unit its timed run repeats.
    """
    device = detector.device
    rcnn = isinstance(detector.extractor, RCNNFeatureExtractor)
    first_windows = proposals[0][:detector.config.features.rcnn_batch_size] if rcnn else proposals[0]
    reset_peak_memory(device)
    if recalibrate:
        calibrate(detector, images[0], first_windows, pass_fraction)
    for _ in range(warmup):
        time_detection(detector, images[0], first_windows, Stopwatch(device))
    watch = Stopwatch(device)
    if rcnn:  # its conv layers run inside ``features``: timed there, moved to ``conv`` below
        detector.extractor.conv_timer = lambda: watch.section("window_conv")
    for image, boxes in zip(images, proposals):
        time_detection(detector, image, boxes, watch)
    return {"images": len(images), **_per_image(watch.seconds, len(images)),
            "cpu": _per_image(watch.cpu_seconds, len(images)), **peak_memory(device)}


def _per_image(seconds: dict[str, float], images: int) -> dict[str, float]:
    """Section totals -> per-image ``conv``, ``pool_fc``, ``svm_nms_bbox`` and ``total``."""
    steps = {"conv": seconds["conv"] + seconds["window_conv"], "pool_fc": seconds["features"] - seconds["window_conv"],
             "svm_nms_bbox": seconds["svm_nms_bbox"]}
    steps = {name: value / images for name, value in steps.items()}
    return {**steps, "total": sum(steps.values())}


def _ratios(report: dict, clock: str) -> dict[str, float]:
    """Speedups over R-CNN (total and conv only) and SPP's total / conv, by wall (``""``) or ``"cpu"`` time."""
    def times(key):
        return report[key][clock] if clock else report[key]

    rcnn, ratios = times("rcnn"), {}
    for suffix in ("1scale", "5scale"):
        spp = times(f"spp_{suffix}")
        ratios.update({f"speedup_{suffix}": rcnn["total"] / spp["total"],
                       f"speedup_conv_{suffix}": rcnn["conv"] / spp["conv"],
                       f"overhead_{suffix}": spp["total"] / spp["conv"]})
    return ratios


def run_benchmark(detector: Detector, images: list[np.ndarray], settings: BenchmarkSettings,
                  random_svms: bool, log: Callable[[str], None] = print) -> dict:
    """Time the three modes of ``detector`` on ``images`` (uint8 RGB arrays) -> the report (see module doc)."""
    if not images:
        raise BenchmarkError("no images to benchmark")
    if settings.proposals < 1 or settings.warmup < 0 or not 0 < settings.pass_fraction <= 1:
        raise BenchmarkError("need at least 1 proposal per image, a warm-up count >= 0 and a pass fraction in (0, 1]")
    proposal_config = dataclasses.replace(detector.config.proposals, max_proposals=settings.proposals)
    proposals, found, proposal_seconds = [], [], 0.0
    for image in images:
        start = time.perf_counter()
        boxes = selective_search(image, proposal_config)
        proposal_seconds += time.perf_counter() - start
        found.append(len(boxes))
        proposals.append(fixed_proposals(boxes, settings.proposals))
    log(f"proposals: {np.mean(found):.0f} found per image on average, padded/cut to {settings.proposals}")
    rcnn_images = len(images) if settings.rcnn_images is None else max(1, min(settings.rcnn_images, len(images)))
    plan = {
        "spp_1scale": ("spp", settings.single_scale, len(images)),
        "spp_5scale": ("spp", settings.multi_scale, len(images)),
        "rcnn": ("rcnn", settings.single_scale, rcnn_images),
    }
    report = {"device": describe_device(detector.device), "date": date.today().isoformat(),
              "backbone": detector.backbone.name, "images": len(images), "rcnn_images": rcnn_images,
              "proposals_per_image": settings.proposals, "proposals_found_per_image": float(np.mean(found)),
              "proposal_seconds": proposal_seconds / len(images),
              "svm_pass_fraction": settings.pass_fraction if random_svms else None}
    trained_mode = detector.config.features.mode
    for key, (mode, scales, count) in plan.items():
        mode_det = mode_detector(detector, mode, scales, settings.rcnn_batch_size)
        log(f"{key}: {count} image(s) ...")
        shape = ({"crop_size": mode_det.backbone.crop_size, "batch_size": mode_det.config.features.rcnn_batch_size}
                 if mode == "rcnn" else {"scales": list(scales)})
        report[key] = {**shape, **run_mode(mode_det, images[:count], proposals[:count], settings.warmup,
                                           recalibrate=random_svms or mode != trained_mode,
                                           pass_fraction=settings.pass_fraction if random_svms else None)}
        log(f"{key}: {report[key]['total']:.3f} s per image")
    return {**report, **_ratios(report, ""), "cpu_time": _ratios(report, "cpu")}


# -- reporting ------------------------------------------------------------------------------------

_LABELS = {"rcnn": "R-CNN", "spp_1scale": "SPP-net 1-scale", "spp_5scale": "SPP-net 5-scale"}


def format_report(report: dict) -> str:
    """The report as Markdown tables shaped like the paper's (recipe §11), seconds per image:
    wall-clock time, then the process's CPU time."""
    lines = [f"{report['backbone']}, {report['device']}, {report['proposals_per_image']} windows per image "
             f"(seconds per image; R-CNN on {report['rcnn_images']} of {report['images']} image(s))"]
    for clock, title in (("", "wall clock"), ("cpu", "process CPU time (all threads)")):
        lines += ["", f"{title}:", "", _table(report, clock)]
    lines += ["", f"proposals (selective search, not in the totals): {report['proposal_seconds']:.3f} s per image, "
              f"{report['proposals_found_per_image']:.0f} windows found on average"]
    if report.get("svm_pass_fraction") is not None:
        lines.append(f"untrained detector: random SVMs passing {report['svm_pass_fraction']:.0%} of (window, class) "
                     "pairs into NMS")
    return "\n".join(lines)


def _table(report: dict, clock: str) -> str:
    """One Markdown table of the three modes by wall (``""``) or ``"cpu"`` time; memory with the wall one."""
    def mib(value):
        return "–" if value is None else f"{value:.0f}"

    ratios = report["cpu_time"] if clock else report
    memory = "" if clock else " peak RSS MiB | peak GPU MiB |"
    lines = ["| method | scales | images | conv | pool + fc | SVM + NMS + bbox | total | total / conv "
             "| speedup (conv) | speedup (total) |" + memory,
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if memory else "")]
    for key in ("rcnn", "spp_1scale", "spp_5scale"):
        row = report[key]
        times = row[clock] if clock else row
        suffix = key.removeprefix("spp_")
        speedups = ("1×", "1×") if key == "rcnn" else (f"{ratios[f'speedup_conv_{suffix}']:.1f}×",
                                                        f"{ratios[f'speedup_{suffix}']:.1f}×")
        scales = f"{row['crop_size']}² crops" if key == "rcnn" else ",".join(str(s) for s in row["scales"])
        line = (f"| {_LABELS[key]} | {scales} | {row['images']} | {times['conv']:.4f} | {times['pool_fc']:.4f} "
                f"| {times['svm_nms_bbox']:.4f} | {times['total']:.4f} | {times['total'] / times['conv']:.2f} "
                f"| {speedups[0]} | {speedups[1]} |")
        lines.append(line + (f" {mib(row['peak_cpu_rss_mb'])} | {mib(row['peak_gpu_mb'])} |" if memory else ""))
    return "\n".join(lines)
