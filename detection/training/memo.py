"""What fine-tuning reads again and again, kept in memory: conv maps and pooled window vectors."""
from __future__ import annotations

import functools

import numpy as np
import torch

from detection.core.boxes import flip_boxes
from detection.core.images import load_image
from detection.data.records import ImageRecord
from detection.training.stages import FLIP_SUFFIX
from detection.training.windows import TrainingWindows

# Fine-tuning draws windows from random images every iteration. Cached maps are memory-mapped, so
# the page cache keeps recently read ones without costing this process memory; this many images'
# maps are also kept as tensors (on the device), so an image drawn again soon costs nothing.
MAPS_IN_MEMORY = 64
# ... and it draws each candidate window many times (iterations · 128 / candidates), so the SPP
# vectors of every image's candidate windows are pooled once and kept, up to this many bytes (fp16).
POOLED_IN_MEMORY_BYTES = 2 << 30


class MapReader:
    """Conv maps of the training images by index, through the conv cache: index i < n is image i,
    n + i its horizontal mirror image (cached under ``<image id>#flip``).

    ``sources[i]`` is the hash of image i's file (:meth:`Cache.source`), which its cached maps (and
    its mirror image's) must have been computed from. :meth:`__call__` keeps the ``in_memory`` most
    recently used maps; :meth:`compute` fills the cache without keeping anything.
    """

    def __init__(self, extractor, records: list[ImageRecord], sources: list[str | None],
                 in_memory: int = MAPS_IN_MEMORY):
        self.extractor = extractor
        self.records = records
        self.sources = sources
        self._remembered = functools.lru_cache(maxsize=in_memory)(self.compute)

    def key(self, index: int) -> str:
        record = self.records[index % len(self.records)]
        return record.image_id + (FLIP_SUFFIX if index >= len(self.records) else "")

    def cached(self, index: int) -> bool:
        return self.extractor.cached(self.key(index), self.sources[index % len(self.records)])

    def compute(self, index: int) -> tuple[list[torch.Tensor], tuple[int, int]]:
        record = self.records[index % len(self.records)]
        flipped = index >= len(self.records)

        def image() -> np.ndarray:
            pixels = load_image(record.path)
            return np.ascontiguousarray(pixels[:, ::-1]) if flipped else pixels

        return self.extractor.maps(self.key(index), image, self.sources[index % len(self.records)])

    def __call__(self, index: int) -> tuple[list[torch.Tensor], tuple[int, int]]:
        return self._remembered(index)


class PooledWindows:
    """The ``pool_fn`` of :class:`~features.finetune.FineTuner`: SPP vectors of training windows.

    ``self(index, window (n,), scale_index (n,) or None)`` gives those windows' vectors of image
    ``index`` (n + i: image i flipped, its windows mirrored). The first request for an image at a
    scale pools all of that image's ``candidates`` at once and keeps them: one pyramid table per
    image and scale for the whole of fine-tuning, where pooling each mini-batch's few windows of
    each image builds a table per image per iteration (the cost that made fine-tuning most of
    training). Kept vectors are fp16, up to ``max_bytes``; images that no longer fit are pooled per
    request. A max over fp16 map values is exact in fp16, so kept and fresh vectors are equal.

    ``candidates``: per image, a (N_i,) bool mask of the windows fine-tuning can draw (None: all).
    """

    def __init__(self, extractor, maps: MapReader, windows: list[TrainingWindows],
                 candidates: list[np.ndarray] | None = None, max_bytes: int = POOLED_IN_MEMORY_BYTES):
        self.extractor = extractor
        self.maps = maps
        self.windows = windows
        self.candidates = candidates if candidates is not None else [np.ones(len(w.boxes), bool) for w in windows]
        self.max_bytes = max_bytes
        self.kept_bytes = 0
        # (image index, scale index or -1 for the §4 rule's) -> (window -> row or -1, (rows, D) fp16 vectors)
        self._blocks: dict[tuple[int, int], tuple[np.ndarray, torch.Tensor]] = {}

    def _pool(self, index: int, window: np.ndarray, scale: int) -> torch.Tensor:
        """Windows of image ``index`` at scale index ``scale`` (-1: the §4 rule's) -> (n, D) fp16."""
        maps, image_size = self.maps(index)
        boxes = self.windows[index % len(self.windows)].boxes[window]
        if index >= len(self.windows):
            boxes = flip_boxes(boxes, image_size[1])
        scale_index = None if scale < 0 else np.full(len(window), scale)
        return self.extractor.pool(maps, boxes, image_size, scale_index=scale_index).to(torch.float16)

    def _block(self, index: int, scale: int) -> tuple[np.ndarray, torch.Tensor] | None:
        """The kept vectors of image ``index``'s candidates at ``scale``, pooled now if new; None if they do not fit."""
        key = (index, scale)
        if key not in self._blocks:
            mask = self.candidates[index % len(self.windows)]
            chosen = np.flatnonzero(mask)
            size = len(chosen) * self.extractor.output_dim * 2
            if self.kept_bytes + size > self.max_bytes:
                return None
            rows = np.full(len(mask), -1, dtype=np.int64)
            rows[chosen] = np.arange(len(chosen))
            self._blocks[key] = rows, self._pool(index, chosen, scale)
            self.kept_bytes += size
        return self._blocks[key]

    def __call__(self, index: int, window: np.ndarray, scale_index: np.ndarray | None) -> torch.Tensor:
        window = np.asarray(window, dtype=np.int64)
        scales = np.full(len(window), -1) if scale_index is None else np.asarray(scale_index, dtype=np.int64)
        out = torch.empty((0, self.extractor.output_dim)) if len(window) == 0 else None
        for scale in np.unique(scales):
            picked = np.flatnonzero(scales == scale)
            block = self._block(index, int(scale))
            if block is None:
                vectors = self._pool(index, window[picked], int(scale))
            else:
                rows = block[0][window[picked]]
                if (rows < 0).any():
                    raise ValueError(f"image {index}: windows {window[picked][rows < 0].tolist()} are not candidates")
                vectors = block[1][torch.from_numpy(rows)]
            if out is None:
                out = vectors.new_empty((len(window), vectors.shape[1]), dtype=torch.float32)
            out[torch.from_numpy(picked).to(out.device)] = vectors.float()
        return out
