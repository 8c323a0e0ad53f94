"""Selective search boxes per image, cached on disk and computed in parallel processes (:mod:`proposals.pool`).

With precomputed proposals (:mod:`proposals.precomputed`) the store reads them instead of running
selective search, under a fingerprint of the file, so that no cache mixes the two.
"""
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
from proposals.precomputed import PrecomputedProposals, ProposalFileError
from proposals.selective_search import selective_search

STAGE = "proposals"

PathLike = str | os.PathLike


def with_ground_truth(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(N, 4), (G, 4) -> (G + N, 4) float64: the GT boxes first, as training windows (recipe §5)."""
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([gt, np.asarray(proposals, dtype=np.float64).reshape(-1, 4)])


def proposal_bytes(config: ProposalConfig) -> int:
    """An upper bound on one image's cached boxes, in bytes: ``max_proposals`` float32 boxes and a header."""
    return 16 * max(0, config.max_proposals) + 512


def _proposals_for_file(item: tuple[str, PathLike], config: ProposalConfig,
                        precomputed: PrecomputedProposals | None = None) -> tuple[np.ndarray | None, str | None]:
    """Read the image of one (key, path) and run selective search (or look its key up in ``precomputed``)
    -> ((N, 4) boxes, None), or (None, reason) if unreadable or missing from the proposal file.

    The reason travels back as a string because ImageError's two-argument constructor does not
    survive pickling from a worker process.
    """
    try:
        return propose(item[0], load_image(item[1]), config, precomputed), None
    except (ImageError, ProposalFileError) as err:
        return None, str(err)


def propose(key: str, image: np.ndarray, config: ProposalConfig,
             precomputed: PrecomputedProposals | None) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (N, 4) boxes: selective search, or ``precomputed``'s for ``key`` clipped to the image."""
    if precomputed is None:
        return selective_search(image, config)
    return precomputed.boxes(key, image.shape[1], image.shape[0])


class ProposalStore:
    """Selective search boxes by image key, under stage ``proposals`` and the config's fingerprint."""

    def __init__(self, cache: Cache, config: ProposalConfig, workers: int = 1,
                 precomputed: PrecomputedProposals | None = None):
        self.cache = cache
        self.config = config
        self.workers = max(1, workers)
        self.precomputed = precomputed
        if precomputed is None:
            self.fingerprint = fingerprint(config)
            described = {"stage": STAGE, "proposals": dataclasses.asdict(config)}
        else:
            self.fingerprint = "file-" + precomputed.fingerprint
            described = {"stage": STAGE, "precomputed": str(precomputed.path)}
        cache.describe(STAGE, self.fingerprint, described)

    def _cached(self, key: str, source: str | None) -> np.ndarray | None:
        """The cached boxes of ``key`` if they were computed from the file whose hash is ``source``."""
        entry = None if source is None else self.cache.get(STAGE, self.fingerprint, key, source=source)
        return None if entry is None else entry["boxes"].astype(np.float64)

    def _store(self, key: str, source: str | None, boxes: np.ndarray) -> None:
        if source is not None:  # None: the file could not be hashed, so the entry could never be checked
            # boxes are whole pixel indices, exact in float32 at half the disk space
            self.cache.put(STAGE, self.fingerprint, key, {"boxes": boxes.astype(np.float32)}, source=source)

    def has(self, key: str, source: str | None) -> bool:
        """Whether boxes of ``key`` computed from the file whose hash is ``source`` are cached."""
        return source is not None and self.cache.has(STAGE, self.fingerprint, key, source=source)

    def get(self, key: str, image_path: PathLike) -> np.ndarray:
        """(N, 4) float64 boxes for one image, computed and cached on first use.

        The cached boxes are used only when they were computed from a file with the same content
        as ``image_path`` now (:meth:`Cache.source`). Raises :class:`ImageError` when the image
        cannot be read, :class:`ProposalFileError` when the precomputed proposals lack it.
        """
        source = self.cache.source(image_path)
        boxes = self._cached(key, source)
        if boxes is None:
            boxes = propose(key, load_image(image_path), self.config, self.precomputed)
            self._store(key, source, boxes)
        return boxes

    def compute_all(self, items: list[tuple[str, PathLike]],
                    progress: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Boxes for every (key, image path): key -> (N, 4) float64, and key -> failure reason.

        Keys cached from files with the images' current content are only read from the cache. The
        others (stale entries included) are computed (in ``workers`` processes when more than one)
        and each is cached as soon as it is done, so an interrupted run keeps its finished images.
        An unreadable image is reported in the failures and does not stop the others.
        """
        found: dict[str, np.ndarray] = {}
        sources = {key: self.cache.source(path) for key, path in items}
        missing: list[tuple[str, PathLike]] = []
        for key, path in items:
            cached = self._cached(key, sources[key])
            if cached is None:
                missing.append((key, path))
            else:
                found[key] = cached
        failures: dict[str, str] = {}
        bar = tqdm(total=len(items), initial=len(found), desc="proposals", disable=not progress, leave=False)
        with bar:
            for key, boxes, reason in self._compute(missing):
                if reason is None:
                    self._store(key, sources[key], boxes)
                    found[key] = boxes
                else:
                    failures[key] = reason
                bar.update()
        # workers finish in any order; callers get the items' order
        return {key: found[key] for key, _ in items if key in found}, failures

    def _compute(self, items: list[tuple[str, PathLike]]) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
        """Yield (key, boxes or None, failure reason or None) for each item, in completion order."""
        workers = 0 if self.workers == 1 or len(items) <= 1 else min(self.workers, len(items))
        compute = functools.partial(_proposals_for_file, config=self.config, precomputed=self.precomputed)
        for (key, _), (boxes, reason) in WorkerPool(workers).map_unordered(compute, items, _lost):
            yield key, boxes, reason


def _lost(item: tuple[str, PathLike], reason: str) -> tuple[None, str]:
    return None, f"{item[1]}: {reason}"
