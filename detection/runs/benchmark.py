"""SPP-net against R-CNN on the same images, proposals and hardware (``sppnet benchmark``, recipe §11).

Three detectors share one backbone, one set of SVMs and one box regressor and differ only in how
window features are made: SPP-net at one scale, SPP-net at several scales (the paper's five), and
R-CNN (:mod:`features.rcnn`: every distinct window cropped, warped and run through the conv layers). Each
image's proposals are computed once, timed on their own, and cut to at most P windows; every mode
detects on the same windows. (Padding an image with repeated windows would add no work: each mode
features a repeated window once, R-CNN each distinct box and SPP-net each distinct scale and
cells, :meth:`~detection.detector.Detector.features`.)

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

Timing and memory are measured by :mod:`detection.runs.timing` (on a GPU every timed section starts
and ends with ``torch.cuda.synchronize``); :mod:`detection.runs.benchmark_report` computes the
speedups (R-CNN against SPP-net on the same images when R-CNN runs on fewer: images differ in their
window counts) and formats the tables. Before timing,
each mode runs ``warmup`` untimed detections of the first image (R-CNN: one batch of its
windows, the same work its timed run repeats batch after batch).

Without a trained model the detector is *untrained* (``Detector.untrained``): the backbone's random
initialisation (or ``--backbone-weights``), VOC's 20 classes, random SVMs and zero box regressors. Timing does not
depend on the weights, except through how many windows pass the SVM threshold into NMS: so the
features are scaled to the recipe's mean norm of 20 and each random SVM's bias is set so that
a fraction ``pass_fraction`` of the first image's windows pass -1.5 (default ``PASS_FRACTION``). A trained model keeps its own
scale in the modes it was trained in; in the others its features are rescaled to norm 20 the same
way (its SVMs were not trained on them: only the timing means anything there).
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import date
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from detection.core.config import FIVE_SCALES, PASS_FRACTION, SINGLE_SCALE
from detection.core.errors import SppnetError
from detection.detector import Detector
from detection.runs.benchmark_report import speedups
from detection.runs.timing import Stopwatch, describe_device, peak_memory, reset_peak_memory
from features.backbones import conv_precision
from features.extractor import first_of_groups
from features.rcnn import RCNNFeatureExtractor
from proposals.selective_search import selective_search

MODES = ("spp_1scale", "spp_5scale", "rcnn")
STEPS = ("conv", "pool_fc", "svm_nms_bbox")


class BenchmarkError(SppnetError, ValueError):
    """Benchmark inputs that cannot be used; the message says which."""


def one_scale_row(scales: tuple[int, ...]) -> int:
    """The 1-scale row's shorter side for a detector trained at ``scales``: its own scale when it has
    one, else the paper's single scale (688, recipe §4)."""
    return scales[0] if len(scales) == 1 else SINGLE_SCALE[0]


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


# -- inputs ---------------------------------------------------------------------------------------

def benchmark_windows(boxes: np.ndarray, count: int) -> np.ndarray:
    """(N, 4) proposals -> the first ``count`` of them, (min(N, count), 4)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise BenchmarkError("selective search found no windows in an image; there is nothing to time on it")
    return boxes[:count]


def mode_detector(detector: Detector, mode: str, scales: tuple[int, ...], rcnn_batch_size: int | None) -> Detector:
    """The same detector (backbone, head, SVMs, regressor shared) with feature mode and scales replaced."""
    features = {"mode": mode, "scales": scales}
    if rcnn_batch_size is not None:
        features["rcnn_batch_size"] = rcnn_batch_size
    return detector.replace(features=features)


def calibrated(detector: Detector, image: np.ndarray, boxes: np.ndarray, pass_fraction: float | None) -> Detector:
    """The detector with its SVM features scaled to mean norm 20 on these windows (each distinct one
    once, :meth:`Detector.features`) and, given a
    ``pass_fraction`` (random SVMs), biases set so that this fraction of the windows pass the score threshold."""
    features = detector.features(detector.compute_maps(image), boxes, image.shape[:2])
    norm = float(features.svm.norm(dim=1).mean())  # unscaled: ``score`` applies the scale
    target = detector.config.svm.feature_norm_target  # recipe §7
    scaled = detector.replace(feature_scale=target / norm) if norm > 0 else detector
    if pass_fraction is None:
        return scaled
    margins = scaled.score(features) - scaled.svm_bias  # (N, K)
    return scaled.replace(svm_bias=detector.config.test.score_threshold
                          - torch.quantile(margins, 1 - pass_fraction, dim=0))


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


@contextlib.contextmanager
def _counted(section: contextlib.AbstractContextManager, bar: tqdm, windows: int) -> Iterator[None]:
    """``section``, then ``windows`` more on the progress bar."""
    with section:
        yield
    bar.update(windows)


def run_mode(detector: Detector, images: list[np.ndarray], proposals: list[np.ndarray], warmup: int,
             recalibrate: bool, pass_fraction: float | None, label: str = "", progress: bool = False,
             first: int | None = None) -> dict:
    """Calibrate, warm up and time one mode -> per-image seconds of each step, total and peak memory.

    With ``first`` < len(images), ``"first"`` holds the same over the first ``first`` images alone
    (those R-CNN runs on: the speedups compare the same images and windows). R-CNN calibrates and
    warms up on one batch of windows, the unit its timed run repeats. With ``progress``, a bar
    counts the windows done, with an ETA: R-CNN's after each conv batch (minutes per image on a
    CPU), SPP's after each image.
    """
    device = detector.device
    rcnn = isinstance(detector.extractor, RCNNFeatureExtractor)
    batch = detector.config.features.rcnn_batch_size
    first_windows = proposals[0][:batch] if rcnn else proposals[0]
    reset_peak_memory(device)
    if recalibrate:
        detector = calibrated(detector, images[0], first_windows, pass_fraction)
    for _ in range(warmup):
        time_detection(detector, images[0], first_windows, Stopwatch(device))
    watch = Stopwatch(device)
    # every update is a whole conv batch (seconds on a CPU), so each is shown: no minimum interval
    # R-CNN convolves each distinct box once (RCNNFeatureExtractor.pool_distinct)
    counts = [len(first_of_groups(b)[0]) if rcnn else len(b) for b in proposals]
    bar = tqdm(total=sum(counts), desc=label, unit="win", disable=not progress, leave=False, mininterval=0)
    with bar:
        if rcnn:  # its conv layers run inside ``features``: timed there, moved to ``conv`` below
            sizes = iter([min(batch, n - start) for n in counts for start in range(0, n, batch)])
            detector.extractor.conv_timer = lambda: _counted(watch.section("window_conv"), bar, next(sizes))
        subset = {}
        for done, (image, boxes) in enumerate(zip(images, proposals), start=1):
            time_detection(detector, image, boxes, watch)
            if not rcnn:
                bar.update(len(boxes))
            if done == first and first < len(images):
                subset = {"first": {"images": first, **_per_image(watch.seconds, first),
                                    "cpu": _per_image(watch.cpu_seconds, first)}}
    return {"images": len(images), **_per_image(watch.seconds, len(images)),
            "cpu": _per_image(watch.cpu_seconds, len(images)), **subset, **peak_memory(device)}


def _per_image(seconds: dict[str, float], images: int) -> dict[str, float]:
    """Section totals -> per-image ``conv``, ``pool_fc``, ``svm_nms_bbox`` and ``total``."""
    seconds = defaultdict(float, seconds)
    steps = {"conv": seconds["conv"] + seconds["window_conv"], "pool_fc": seconds["features"] - seconds["window_conv"],
             "svm_nms_bbox": seconds["svm_nms_bbox"]}
    steps = {name: value / images for name, value in steps.items()}
    return {**steps, "total": sum(steps.values())}


def device_amp(detector: Detector) -> bool:
    """Whether the detector's conv layers run in mixed precision (``config.features.amp`` on CUDA)."""
    return conv_precision(detector.config.features.amp, detector.device) is not None


def run_benchmark(detector: Detector, images: list[np.ndarray], settings: BenchmarkSettings,
                  random_svms: bool, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Time the three modes of ``detector`` on ``images`` (uint8 RGB arrays) -> the report (see module doc).

    ``progress``: a bar with an ETA per mode (R-CNN takes minutes per image on a CPU).
    """
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
        proposals.append(benchmark_windows(boxes, settings.proposals))
    log(f"proposals: {np.mean(found):.0f} found per image on average, at most {settings.proposals} used")
    rcnn_images = len(images) if settings.rcnn_images is None else max(1, min(settings.rcnn_images, len(images)))
    plan = {
        "spp_1scale": ("spp", settings.single_scale, len(images)),
        "spp_5scale": ("spp", settings.multi_scale, len(images)),
        "rcnn": ("rcnn", settings.single_scale, rcnn_images),
    }
    report = {"device": describe_device(detector.device), "date": date.today().isoformat(),
              "backbone": detector.backbone.name, "amp": detector.config.features.amp if device_amp(detector) else "off",
              "images": len(images), "rcnn_images": rcnn_images,
              "proposals_per_image": float(np.mean([len(b) for b in proposals])),
              "rcnn_proposals_per_image": float(np.mean([len(b) for b in proposals[:rcnn_images]])),
              "proposals_found_per_image": float(np.mean(found)),
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
                                           pass_fraction=settings.pass_fraction if random_svms else None,
                                           label=key, progress=progress, first=rcnn_images)}
        log(f"{key}: {report[key]['total']:.3f} s per image")
    return {**report, **speedups(report, ""), "cpu_time": speedups(report, "cpu")}
