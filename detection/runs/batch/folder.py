"""A whole `sppnet detect` from Python: inputs found, the model loaded, shards and torchrun ranks merged.

:func:`detect_folder` does it in one call. :class:`FolderDetection` does the same in two steps,
:meth:`~FolderDetection.detect` (this process's images) and :meth:`~FolderDetection.finish` (the
merge of every shard's outputs, by the process whose turn it is), for a front end that reports
between them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from detection.core.config import DEFAULT_MAX_PIXELS, MIN_SIDE_STRIDES
from detection.detector import Detector, resolve_device
from detection.runs.batch.distributed import distributed_env, gather_counts
from detection.runs.batch.errors import BatchError
from detection.runs.batch.inputs import common_root, find_images, shard
from detection.core.hashing import file_sha1
from detection.runs.batch.outputs import OutputDir
from detection.runs.batch.pipeline import ReadOptions
from detection.runs.batch.records import DetectionFilter, class_indices
from proposals.precomputed import PrecomputedProposals
from detection.runs.batch.run import BatchSummary, detect_files, share_cores


@dataclass
class Merged:
    """The outputs of every shard merged: counts over all of them and the images that failed in the end.

    ``done``, ``skipped`` and ``failed`` are summed over torchrun's ranks; for independent
    ``--shard`` runs they are None (each shard reported its own).
    """

    failures: dict[str, str] = field(default_factory=dict)
    done: int | None = None
    skipped: int | None = None
    failed: int | None = None


class FolderDetection:
    """Detection over ``inputs`` (files, directories, glob patterns; ``list_file``) into ``out``.

    ``shard=(i, n)`` takes shard i of n of the sorted inputs; under torchrun (RANK/WORLD_SIZE set)
    the rank and world size pick the shard and ``device="cuda"`` means the rank's local GPU.
    ``score_thresh`` (margin), ``min_prob``, ``topk`` and ``classes`` (names) filter the detections;
    ``min_prob`` defaults to the config's ``test.detect_min_probability`` for a calibrated model
    (see :func:`min_probability`). ``amp`` ("bf16", "fp16", "off") overrides the model's conv
    precision on CUDA. ``min_side`` defaults to :data:`MIN_SIDE_STRIDES` conv strides; of a video,
    every ``video_stride``-th frame is taken; ``overrides`` change the model's test-time options
    (``{"test.nms_iou": 0.4}``, see :meth:`Detector.load`). Errors in the inputs, the model or
    ``out`` (made with other settings, in use by another process) are raised here, before any
    image is read. The lock on ``out`` is held until :meth:`close` (or the end of a ``with`` block).
    ``proposals``: a precomputed proposal file (:mod:`proposals.precomputed`) instead of selective search.
    """

    def __init__(self, model: str | os.PathLike, inputs: Sequence[str], out: str | os.PathLike, *,
                 list_file: str | os.PathLike | None = None, score_thresh: float | None = None,
                 topk: int | None = None, classes: Sequence[str] | None = None, save_vis: bool = False,
                 max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None,
                 shard: tuple[int, int] | None = None, device: str | None = "auto", workers: int = 1,
                 video_stride: int = 1, progress: bool = True, overrides: Mapping[str, Any] | None = None,
                 proposals: str | os.PathLike | None = None,
                 min_prob: float | None = None, amp: str | None = None):
        self.rank, self.world, local_rank = distributed_env()
        if self.world > 1 and shard is not None:
            raise BatchError("--shard cannot be combined with torchrun's RANK/WORLD_SIZE: use one or the other")
        self.index, self.count = shard or (self.rank, self.world)
        if not inputs and list_file is None:
            raise BatchError("no inputs: give image or video files, directories, glob patterns or --list FILE")
        if video_stride < 1:
            raise BatchError(f"--video-stride: must be at least 1, got {video_stride}")
        self.detector = Detector.load(model, device=_device(device, self.world, local_rank), overrides=overrides)
        if amp is not None:
            self.detector = self.detector.replace(features={"amp": amp})
        if self.detector.device.type == "cpu":
            share_cores(workers)
        self.keep = DetectionFilter(score_thresh, topk, class_indices(classes, self.detector.classes) if classes else None,
                                    min_probability(min_prob, self.detector))
        self.paths = find_images(inputs, list_file)
        if not self.paths:
            raise BatchError(f"no image or video files found in {' '.join(map(str, inputs)) or list_file}")
        self.out = OutputDir(Path(out), self.index, self.count)
        self.out.root.mkdir(parents=True, exist_ok=True)
        precomputed = None if proposals is None else PrecomputedProposals(proposals)
        settings = {"model_sha1": file_sha1(model), "score_thresh": score_thresh, "topk": topk,
                    "classes": list(classes) if classes else None}
        if overrides:  # only when given, so directories made before overrides existed still match
            settings["set"] = dict(overrides)
        if precomputed is not None:  # the same
            settings["proposals"] = precomputed.fingerprint
        if min_prob is not None:  # only when given, like overrides
            settings["min_prob"] = min_prob
        self._lock = self.out.lock()
        try:
            self.out.check_settings(settings, self.detector.classes)
        except BaseException:
            self.close()
            raise
        self.out.done_marker.unlink(missing_ok=True)  # this shard is not done until it says so again
        self.options = ReadOptions(self.detector.config.proposals, max_pixels=max_pixels,
                                   min_side=min_side or MIN_SIDE_STRIDES * self.detector.backbone.stride,
                                   precomputed=precomputed)
        self.workers = workers
        self.video_stride = video_stride
        self.vis_root = common_root(self.paths) if save_vis else None
        self.progress = progress

    def close(self) -> None:
        """Release the lock on ``out``."""
        self._lock.close()

    def __enter__(self) -> FolderDetection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def label(self) -> str:
        return "detect" if self.count == 1 else f"shard {self.index}/{self.count}"

    def detect(self) -> BatchSummary:
        """Detect in this process's shard of the inputs (skipping those done by an earlier run)."""
        return detect_files(self.detector, shard(self.paths, self.index, self.count), self.out, self.options,
                            self.keep, workers=self.workers, vis_root=self.vis_root, progress=self.progress,
                            video_stride=self.video_stride)

    def finish(self, summary: BatchSummary) -> Merged | None:
        """Merge every shard's outputs if it falls to this process; None when another one merges.

        Under torchrun every rank waits for all at a barrier and rank 0 merges; of independent
        shards, the one that finishes last merges (merging twice is harmless).
        """
        classes = self.detector.classes
        if self.world > 1:
            done, skipped, failed = gather_counts([summary.done, summary.skipped, len(summary.failed)])
            return Merged(self.out.merge(classes)[1], done, skipped, failed) if self.rank == 0 else None
        if self.count > 1:
            self.out.done_marker.touch()
            return Merged(self.out.merge(classes)[1]) if self.out.all_shards_done() else None
        return Merged(self.out.merge(classes, summary.failed)[1])

    def exit_status(self, summary: BatchSummary, merged: Merged | None) -> int:
        """`sppnet detect`'s exit status: 1 when an image failed, else 0.

        Under torchrun it counts every rank's images on rank 0, and other ranks exit 0: a non-zero
        exit would make torchrun stop rank 0 in the middle of merging.
        """
        if self.world > 1:
            return 1 if merged is not None and merged.failed else 0
        return 1 if summary.failed else 0


def min_probability(requested: float | None, detector: Detector) -> float | None:
    """The probability threshold: ``requested``, or the config's default for a calibrated model;
    None for a model without calibration (margins only), which refuses a ``requested`` one."""
    if detector.calibration is None:
        if requested is not None:
            raise BatchError("--min-prob: this model has no calibration (margins only); use --score-thresh, "
                             "or retrain it to get probabilities")
        return None
    return detector.config.test.detect_min_probability if requested is None else requested


def detect_folder(model: str | os.PathLike, inputs: Sequence[str], out: str | os.PathLike,
                  **options) -> tuple[BatchSummary, Merged | None]:
    """Run :class:`FolderDetection` (same arguments) to the end: this process's summary and the merge, if its own."""
    with FolderDetection(model, inputs, out, **options) as job:
        summary = job.detect()
        return summary, job.finish(summary)


def _device(requested: str | None, world: int, local_rank: int) -> torch.device:
    device = resolve_device(requested)
    # one GPU per rank when torchrun starts several on a machine
    return resolve_device(f"cuda:{local_rank}") if device.type == "cuda" and world > 1 else device
