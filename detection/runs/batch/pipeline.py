"""Reading and proposing images ahead of the conv layers, in the worker processes of :mod:`proposals.pool`."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from detection.core.config import ProposalConfig
from detection.core.images import DEFAULT_MAX_PIXELS, ImageError, load_image
from detection.runs.batch.video import Frame, frame_key
from proposals.pool import WorkerPool
from proposals.selective_search import selective_search

IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class ReadOptions:
    """How each image is read and proposed; ``min_side`` and ``max_pixels`` reject unusable images."""

    proposals: ProposalConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 1


@dataclass
class Prepared:
    """One image ready for the conv stage: ``image`` (H, W, 3) uint8 RGB and ``boxes`` (N, 4), or a ``reason``.

    For a video frame, ``path`` is the video's and ``frame`` and ``time`` (seconds) say which frame.
    """

    path: str
    image: np.ndarray | None = None
    boxes: np.ndarray | None = None
    reason: str | None = None
    frame: int | None = None
    time: float | None = None

    @property
    def key(self) -> str:
        """The image's name in the outputs: its path, or ``video#frame=NNNNNN``."""
        return self.path if self.frame is None else frame_key(self.path, self.frame)


def prepare_image(item: str | Frame, options: ReadOptions) -> Prepared:
    """Read and decode one image (a path; a video frame comes decoded) and run selective search on it.

    Any failure becomes a reason. Runs in a worker process: the reason travels back as a string,
    and an unexpected error from a decoder or OpenCV fails this image rather than the batch.
    """
    if isinstance(item, Frame):
        prepared = Prepared(item.video, item.image, frame=item.index, time=item.time)
    else:
        try:
            prepared = Prepared(item, load_image(item, max_pixels=options.max_pixels, min_side=options.min_side))
        except ImageError as err:
            return Prepared(item, reason=err.reason)
    try:
        prepared.boxes = selective_search(prepared.image, options.proposals)
    except Exception as err:  # noqa: BLE001 - one image's failure must not end a batch of millions
        prepared.image, prepared.reason = None, f"selective search failed ({type(err).__name__}: {err})"
    return prepared


class ProposalPipeline:
    """Prepared images in completion order, computed ahead in ``workers`` processes (0: in this one).

    At most two images per worker are in flight, so workers stay busy while memory stays bounded.
    ``wait_seconds`` adds up the time the consumer spent waiting for the next image: with enough
    workers it stays near zero after the pool has started.
    """

    def __init__(self, options: ReadOptions, workers: int):
        self.options = options
        self.pool: WorkerPool[str, Prepared] = WorkerPool(workers, IN_FLIGHT_PER_WORKER)

    @property
    def wait_seconds(self) -> float:
        return self.pool.wait_seconds

    def __call__(self, items: Iterable[str | Frame]) -> Iterator[Prepared]:
        """Image paths and video frames -> prepared images, taken from ``items`` only as workers free up."""
        work = functools.partial(prepare_image, options=self.options)
        return (prepared for _, prepared in self.pool.map_unordered(work, items, _lost))


def _lost(item: str | Frame, reason: str) -> Prepared:
    if isinstance(item, Frame):
        return Prepared(item.video, reason=reason, frame=item.index, time=item.time)
    return Prepared(item, reason=reason)
