"""Reading and proposing images ahead of the conv layers, in the worker processes of :mod:`proposals.pool`."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from detection.core.config import ProposalConfig
from detection.core.images import DEFAULT_MAX_PIXELS, ImageError, load_image
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
    """One image ready for the conv stage: ``image`` (H, W, 3) uint8 RGB and ``boxes`` (N, 4), or a ``reason``."""

    path: str
    image: np.ndarray | None = None
    boxes: np.ndarray | None = None
    reason: str | None = None


def prepare_image(path: str, options: ReadOptions) -> Prepared:
    """Read and decode one image and run selective search on it; any failure becomes a reason.

    Runs in a worker process: the reason travels back as a string, and an unexpected error from a
    decoder or OpenCV fails this image rather than the batch.
    """
    try:
        image = load_image(path, max_pixels=options.max_pixels, min_side=options.min_side)
    except ImageError as err:
        return Prepared(path, reason=err.reason)
    try:
        boxes = selective_search(image, options.proposals)
    except Exception as err:  # noqa: BLE001 - one image's failure must not end a batch of millions
        return Prepared(path, reason=f"selective search failed ({type(err).__name__}: {err})")
    return Prepared(path, image, boxes)


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

    def __call__(self, paths: Iterable[str]) -> Iterator[Prepared]:
        work = functools.partial(prepare_image, options=self.options)
        return (prepared for _, prepared in self.pool.map_unordered(work, paths, _lost))


def _lost(path: str, reason: str) -> Prepared:
    return Prepared(path, reason=reason)
