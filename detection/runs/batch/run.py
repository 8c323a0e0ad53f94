"""The run loop of one process: images from the proposal pipeline through the detector to the outputs."""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from detection.runs.batch.outputs import VIS, OutputDir, PredictionStream, write_failures
from detection.runs.batch.pipeline import Prepared, ProposalPipeline, ReadOptions
from detection.runs.batch.records import DetectionFilter, prediction_record
from detection.runs.batch.video import Frame, VideoError, frames_to_read, is_frame_key, is_video, read_frames
from detection.visualize import save_visualization


@dataclass
class BatchSummary:
    """What one process did: ``done`` now, ``skipped`` (done by an earlier run), ``failed`` path -> reason."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_share(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


def _report_failure(path: str, reason: str) -> None:
    tqdm.write(f"failed: {path}: {reason}", file=sys.stderr)


def detect_files(detector, paths: Sequence[str], out: OutputDir, options: ReadOptions,
                 keep: DetectionFilter = DetectionFilter(), workers: int = 1,
                 vis_root: Path | None = None, progress: bool = True,
                 on_failure: Callable[[str, str], None] = _report_failure, video_stride: int = 1) -> BatchSummary:
    """Detect in every image not already done in ``out``, streaming each record as it is finished.

    ``detector`` is a :class:`~detection.detector.Detector`. A video file (:mod:`.video`) gives
    every ``video_stride``-th frame, each an image of its own. Failures are reported through
    ``on_failure`` as they happen and written to ``out.failures_path`` at the end. With
    ``vis_root``, each image is also drawn to ``out.root/vis/<path relative to vis_root>``
    (a frame to ``<video path>.frames/<index>.jpg``).
    """
    done = out.done_files()
    todo = [p for p in paths if not is_video(p) and p not in done]
    videos = [p for p in paths if is_video(p)]
    summary = BatchSummary(skipped=len(paths) - len(videos) - len(todo))
    done_frames = {key for key in done if is_frame_key(key)} if videos else set()
    del done
    pipeline = ProposalPipeline(options, workers)
    stream = PredictionStream(out.stream_path)
    start = time.perf_counter()
    total = len(todo) + sum(frames_to_read(v, video_stride) for v in videos)
    bar = tqdm(total=total, unit="img", desc=_bar_label(out), disable=not progress, smoothing=0.1)

    def fail(key: str, reason: str) -> None:
        summary.failed[key] = reason
        on_failure(key, reason)

    items = _with_frames(todo, videos, done_frames, options, video_stride, summary, bar, fail)
    try:
        for prepared in pipeline(items):
            if prepared.reason is None:
                prepared.reason = _detect_one(detector, prepared, out, stream, keep, vis_root)
            if prepared.reason is None:
                summary.done += 1
            else:
                fail(prepared.key, prepared.reason)
            bar.update()
            bar.set_postfix(waiting=f"{pipeline.wait_seconds / max(time.perf_counter() - start, 1e-9):.0%}",
                            refresh=False)
    finally:
        bar.close()
        stream.close()
        summary.seconds = time.perf_counter() - start
        summary.wait_seconds = pipeline.wait_seconds
        write_failures(out.failures_path, summary.failed)
    return summary


def _with_frames(images: list[str], videos: list[str], done: set[str], options: ReadOptions, stride: int,
                 summary: BatchSummary, bar: tqdm, fail: Callable[[str, str], None]) -> Iterator[str | Frame]:
    """The image paths, then the frames of each video not done yet, read as the pipeline asks for them.

    A video that cannot be read fails under its own path (frames done before are kept).
    """
    yield from images
    for video in videos:
        try:
            for frame in read_frames(video, stride, options.max_pixels, options.min_side):
                if frame.key in done:
                    summary.skipped += 1
                    bar.update()
                else:
                    yield frame
        except VideoError as err:
            fail(video, err.reason)


def _bar_label(out: OutputDir) -> str:
    return "detect" if out.world == 1 else f"detect {out.rank}/{out.world}"


def _detect_one(detector, prepared: Prepared, out: OutputDir, stream: PredictionStream, keep: DetectionFilter,
                vis_root: Path | None) -> str | None:
    """Detect in one prepared image, write its picture (with ``vis_root``) and stream its record; a failure's reason, or None."""
    try:
        dets = keep(detector.detect(prepared.image, prepared.boxes))
    except RuntimeError as err:  # e.g. out of GPU memory on a huge image: fail it, go on
        return f"detection failed ({type(err).__name__}: {err})"
    if vis_root is not None:
        # the picture first: a kill or a full disk before the record leaves the image to be redone
        target = out.root / VIS / Path(prepared.path).relative_to(vis_root)
        if prepared.frame is not None:
            target = target.with_name(f"{target.name}.frames") / f"{prepared.frame:06d}.jpg"
        save_visualization(target, prepared.image, dets, detector.classes)
    stream.write(prediction_record(prepared.path, prepared.image.shape[:2], dets, detector.classes,
                                   prepared.frame, prepared.time))
    return None


def share_cores(workers: int) -> None:
    """On a CPU, give torch in this process the cores the proposal workers leave (at least one).

    Conv threads competing with the workers for the same cores make both slower than either
    alone (measured in docs/benchmarks.md). An explicit OMP_NUM_THREADS (torchrun sets 1) wins.
    """
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores - max(0, workers)))
