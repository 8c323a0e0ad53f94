"""Selective search boxes per image, cached on disk and computed in parallel processes (:mod:`proposals.pool`)."""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Iterator

import numpy as np
from tqdm import tqdm

from detection.core.cache import Cache
from detection.core.config import ProposalConfig, fingerprint
from detection.core.images import ImageError, load_image
from proposals.pool import WorkerPool
from proposals.selective_search import selective_search

STAGE = "proposals"

PathLike = str | os.PathLike


def with_ground_truth(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(N, 4), (G, 4) -> (G + N, 4) float64: the GT boxes first, as training windows (recipe §5)."""
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([gt, np.asarray(proposals, dtype=np.float64).reshape(-1, 4)])


def _proposals_for_file(item: tuple[str, PathLike], config: ProposalConfig) -> tuple[np.ndarray | None, str | None]:
    """Read the image of one (key, path) and run selective search -> ((N, 4) boxes, None), or (None, reason) if unreadable.

    The reason travels back as a string because ImageError's two-argument constructor does not
    survive pickling from a worker process.
    """
    try:
        image = load_image(item[1])
    except ImageError as err:
        return None, str(err)
    return selective_search(image, config), None


class ProposalStore:
    """Selective search boxes by image key, under stage ``proposals`` and the config's fingerprint."""

    def __init__(self, cache: Cache, config: ProposalConfig, workers: int = 1):
        self.cache = cache
        self.config = config
        self.workers = max(1, workers)
        self.fingerprint = fingerprint(config)
        cache.describe(STAGE, self.fingerprint, {"stage": STAGE, "proposals": dataclasses.asdict(config)})

    def _cached(self, key: str) -> np.ndarray | None:
        entry = self.cache.get(STAGE, self.fingerprint, key)
        return None if entry is None else entry["boxes"].astype(np.float64)

    def _store(self, key: str, boxes: np.ndarray) -> None:
        # boxes are whole pixel indices, exact in float32 at half the disk space
        self.cache.put(STAGE, self.fingerprint, key, {"boxes": boxes.astype(np.float32)})

    def get(self, key: str, image_path: PathLike) -> np.ndarray:
        """(N, 4) float64 boxes for one image, computed and cached on first use.

        Raises :class:`ImageError` when the image cannot be read.
        """
        boxes = self._cached(key)
        if boxes is None:
            boxes = selective_search(load_image(image_path), self.config)
            self._store(key, boxes)
        return boxes

    def compute_all(self, items: list[tuple[str, PathLike]],
                    progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Boxes for every (key, image path): key -> (N, 4) float64, and key -> failure reason.

        Cached keys are only read from the cache. The others are computed (in ``workers``
        processes when more than one) and each is cached as soon as it is done, so an interrupted
        run keeps its finished images. An unreadable image is reported in the failures and does
        not stop the others.
        """
        found: dict[str, np.ndarray] = {}
        missing: list[tuple[str, PathLike]] = []
        for key, path in items:
            cached = self._cached(key)
            if cached is None:
                missing.append((key, path))
            else:
                found[key] = cached
        failures: dict[str, str] = {}
        bar = tqdm(total=len(items), initial=len(found), desc="proposals", disable=not progress, leave=False)
        with bar:
            for key, boxes, reason in self._compute(missing):
                if reason is None:
                    self._store(key, boxes)
                    found[key] = boxes
                else:
                    failures[key] = reason
                bar.update()
        # workers finish in any order; callers get the items' order
        return {key: found[key] for key, _ in items if key in found}, failures

    def _compute(self, items: list[tuple[str, PathLike]]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """Yield (key, boxes or None, failure reason or None) for each item, in completion order."""
        workers = 0 if self.workers == 1 or len(items) <= 1 else min(self.workers, len(items))
        compute = functools.partial(_proposals_for_file, config=self.config)
        for (key, _), (boxes, reason) in WorkerPool(workers).map_unordered(compute, items, _lost):
            yield key, boxes, reason


def _lost(item: tuple[str, PathLike], reason: str) -> tuple[None, str]:
    return None, f"{item[1]}: {reason}"
