"""Conv layers once per image per scale, then SPP features for any windows of that image.

This is SPP-net's central saving over R-CNN: the conv part of the backbone runs on the whole image
once per scale (recipe §4), every window is projected onto the resulting feature map (§2) and
pooled into a fixed-length vector (§3). Feature maps can be cached on disk in fp16, so later
stages and reruns never run the conv layers again.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from detection.core.cache import Cache
from detection.core.config import FeatureConfig, fingerprint
from features.backbones import Backbone, conv_precision, prepare_backbone
from features.projection import choose_scales, image_scale_factors, project_boxes
from features.spp import spatial_pyramid_pool, spp_output_dim

CONV_STAGE = "conv"
CACHE_PRECISIONS = {"float16": 2, "int8": 1}  # bytes per cached map value


def conv_fingerprint(backbone: str, weights_id: str, config: FeatureConfig, amp: str | None = None) -> str:
    """What cached conv maps depend on: the backbone and its weights' hash, the scales, the stored
    precision and, when the conv layers run in mixed precision (``amp``, CUDA only), that precision:
    such maps differ from float32 ones in the last bits, so they are cached apart."""
    parts = (backbone, weights_id, tuple(config.scales), *([amp] if amp is not None else []))
    # fp16 entries keep the fingerprint they had before precisions were a setting
    return fingerprint(*parts) if config.cache_precision == "float16" else fingerprint(*parts, config.cache_precision)


def resize_to_scale(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) uint8 -> image whose shorter side is ``scale`` (bilinear, aspect kept; recipe §4)."""
    height, width = image.shape[:2]
    factor = scale / min(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


@runtime_checkable
class WindowFeatureExtractor(Protocol):
    """What training and detection use of a window-feature extractor, SPP-net's
    (:class:`SPPFeatureExtractor`, conv once per image) or R-CNN's (:class:`features.rcnn.RCNNFeatureExtractor`,
    conv per window): the code above is the same for both."""

    backbone: Backbone
    config: FeatureConfig
    device: torch.device

    @property
    def output_dim(self) -> int:
        """D, the length of one window's feature vector."""

    def compute_maps(self, image: np.ndarray) -> list[torch.Tensor]:
        """(H, W, 3) uint8 RGB -> what :meth:`pool` reads, on the device."""

    def maps(self, key: str, load_image: Callable[[], np.ndarray]) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Image ``key``'s maps (cached where that pays) and its (height, width); ``load_image`` on a miss."""

    def pool(self, maps: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int],
             scale_index: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 4) windows in original image pixels -> (N, D) float32 features on the device."""

    def pool_distinct(self, maps: list[torch.Tensor], boxes: np.ndarray,
                      image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4) windows -> (M, D) float32 features of the M <= N windows whose features differ, and
        (N,) int64 each window's row among them, on the device."""


class SPPFeatureExtractor:
    """Conv maps per image and scale (optionally cached), and pooled window features.

    ``weights_id`` names the backbone's weights in cache fingerprints (a hash of the state dict),
    so maps computed with other weights are never reused.
    """

    def __init__(self, backbone: Backbone, config: FeatureConfig, device: torch.device | str = "cpu",
                 cache: Cache | None = None, weights_id: str = ""):
        self.config = config
        self.device = torch.device(device)
        self.amp = conv_precision(config.amp, self.device)
        self.backbone = prepare_backbone(backbone, self.device, self.amp)
        self.cache = cache
        self.conv_fingerprint = conv_fingerprint(backbone.name, weights_id, config, self.amp)
        if cache is not None:
            cache.describe(CONV_STAGE, self.conv_fingerprint,
                           {"backbone": backbone.name, "weights": weights_id, "scales": list(config.scales),
                            "precision": config.cache_precision})

    @property
    def output_dim(self) -> int:
        return spp_output_dim(self.backbone.channels, self.config.pyramid_levels)

    @torch.inference_mode()
    def compute_maps(self, image: np.ndarray) -> list[torch.Tensor]:
        """(H, W, 3) uint8 RGB -> one (C, H_s, W_s) map per configured scale, on the device."""
        maps = []
        for scale in self.config.scales:
            pixels = torch.from_numpy(resize_to_scale(image, scale)).to(self.device)
            maps.append(self.backbone.convolve(self.backbone.preprocess(pixels), self.amp)[0])
        return maps

    def maps(self, key: str, load_image: Callable[[], np.ndarray],
             source: str | None) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Maps for image ``key`` and the image's (height, width), cached in fp16 on disk.

        ``source`` is the hash of the file ``load_image`` reads (:meth:`Cache.source`): a cached
        entry is used only when it was computed from the same content, and None bypasses the
        cache. ``load_image`` is only called on a miss, so a warm cache reads no image files. A
        cached entry is memory-mapped: on the CPU the maps are views of the file's pages.
        """
        use_cache = self.cache is not None and source is not None
        stored = self.cache.get(CONV_STAGE, self.conv_fingerprint, key, source=source, mmap=True) if use_cache else None
        if stored is not None:
            return self.decode_maps(stored), tuple(int(v) for v in stored["image_size"])
        image = load_image()
        maps = self.compute_maps(image)
        if use_cache:
            arrays = self.encode_maps(maps)
            self.cache.put(CONV_STAGE, self.conv_fingerprint, key, {**arrays, "image_size": np.array(image.shape[:2])},
                           source=source)
            # hand back the same values a later cache hit will read, so results never depend on
            # whether the cache was warm
            maps = self.decode_maps(arrays)
        return maps, image.shape[:2]

    def encode_maps(self, maps: list[torch.Tensor]) -> dict[str, np.ndarray]:
        """Maps -> the cache entry's arrays: ``scale{i}`` (C, H, W) fp16, or int8 with ``step{i}`` (C,) float32."""
        arrays = {}
        for i, fmap in enumerate(maps):
            if self.config.cache_precision == "float16":
                arrays[f"scale{i}"] = fmap.to(torch.float16).cpu().numpy()
                continue
            step = fmap.abs().amax(dim=(1, 2)).float() / 127  # (C,)
            step = torch.where(step > 0, step, torch.ones_like(step))
            arrays[f"scale{i}"] = torch.round(fmap / step[:, None, None]).clamp(-127, 127).to(torch.int8).cpu().numpy()
            arrays[f"step{i}"] = step.cpu().numpy()
        return arrays

    def decode_maps(self, arrays: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """The entry's arrays -> one (C, H, W) fp16 map per scale on the device."""
        maps = []
        for i in range(len(self.config.scales)):
            fmap = torch.from_numpy(arrays[f"scale{i}"]).to(self.device)
            if f"step{i}" in arrays:
                step = torch.from_numpy(arrays[f"step{i}"]).to(self.device)[:, None, None]
                fmap = (fmap.float() * step).to(torch.float16)
            maps.append(fmap)
        return maps

    def cached(self, key: str, source: str | None) -> bool:
        """Whether maps of ``key`` computed from the file whose hash is ``source`` are in the cache."""
        return self.cache is not None and source is not None and self.cache.has(
            CONV_STAGE, self.conv_fingerprint, key, source=source)

    def cache_bytes(self, height: int, width: int) -> int:
        """An upper bound on the bytes one image's cached maps take (every scale; the header aside).

        A map has at most :meth:`~features.backbones.Backbone.map_cells` cells a side at the scaled
        size (exactly that for the padded EfficientNet bodies; unpadded networks a little less).
        """
        total = 0
        for factor in image_scale_factors(height, width, self.config.scales).tolist():
            rows, cols = (self.backbone.map_cells(max(1, round(side * factor))) for side in (height, width))
            total += self.backbone.channels * rows * cols * CACHE_PRECISIONS[self.config.cache_precision]
            if self.config.cache_precision == "int8":
                total += 4 * self.backbone.channels  # the float32 step of each channel
        return total

    def window_cells(self, maps: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int],
                     scale_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows (N, 4) in original image coordinates -> the scale each is pooled at, (N,) int64
        into ``config.scales`` (§4), and its (N, 4) int64 cell box on that scale's map (§2).

        ``scale_index`` (N,) when given (fine-tuning draws a random scale per window, as the
        official code), else the one the §4 rule chooses. Windows with equal scale and cells have
        equal SPP vectors (see :func:`distinct_windows`).
        """
        cfg = self.config
        height, width = image_size
        boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32), device=self.device).reshape(-1, 4)
        if scale_index is None:
            scale_index = choose_scales(boxes_t, (height, width), cfg.scales, rule=cfg.scale_rule,
                                        paper_target_side=cfg.paper_target_side,
                                        official_target_side=cfg.official_target_side)
        else:
            scale_index = torch.as_tensor(scale_index, dtype=torch.int64, device=self.device).reshape(-1)
            if len(scale_index) != len(boxes_t) or bool(((scale_index < 0) | (scale_index >= len(maps))).any()):
                raise ValueError(f"scale_index must hold one index in [0, {len(maps)}) per window")
        cells = torch.empty((len(boxes_t), 4), dtype=torch.int64, device=self.device)
        factors = image_scale_factors(height, width, cfg.scales)
        for i, fmap in enumerate(maps):
            selected = torch.nonzero(scale_index == i).squeeze(1)
            if len(selected):
                cells[selected] = project_boxes(boxes_t[selected] * float(factors[i]), self.backbone.stride,
                                                self.backbone.first_center, tuple(fmap.shape[-2:]),
                                                rule=cfg.projection, offset=cfg.official_offset)
        return scale_index, cells

    def pool(self, maps: list[torch.Tensor], boxes: np.ndarray, image_size: tuple[int, int],
             scale_index: torch.Tensor | None = None) -> torch.Tensor:
        """Windows (N, 4) in original image coordinates -> (N, D) float32 SPP vectors on the device.

        Each window is pooled from one scale: ``scale_index`` (N,) int64 into ``config.scales``
        when given (fine-tuning draws a random scale per window, as the official code), else the
        one the §4 rule chooses. The loop is over scales, never over windows.
        """
        return self.pool_cells(maps, *self.window_cells(maps, boxes, image_size, scale_index))

    def pool_distinct(self, maps: list[torch.Tensor], boxes: np.ndarray,
                      image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows (N, 4) -> the (M, D) SPP vectors of the M distinct (scale, cells) pairs among them
        and (N,) int64 each window's row, on the device.

        Windows that project onto the same cells at the same scale have the same vector (8-25% of
        2,000 selective-search windows on 500×375 images at stride 16), so detection pools them,
        and runs the head on them, once.
        """
        scale_index, cells = self.window_cells(maps, boxes, image_size)
        first, rows = window_groups(scale_index, cells)
        first = torch.as_tensor(first, device=self.device)
        return (self.pool_cells(maps, scale_index[first], cells[first]),
                torch.as_tensor(rows, device=self.device))

    def pool_cells(self, maps: list[torch.Tensor], scale_index: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Windows given as :meth:`window_cells` returns them, (N,) and (N, 4) -> (N, D) float32 SPP vectors."""
        out = torch.empty((len(cells), self.output_dim), dtype=torch.float32, device=self.device)
        if len(out) == 0:
            return out
        for i, fmap in enumerate(maps):
            selected = torch.nonzero(scale_index == i).squeeze(1)
            if len(selected) == 0:
                continue
            pooled = spatial_pyramid_pool(fmap.float(), cells[selected], self.config.pyramid_levels).float()
            if len(selected) == len(out):  # all windows at one scale: skip the (N, D) scatter copy
                return pooled
            out[selected] = pooled
        return out


def first_of_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``keys`` (N, k) grouped by equality -> ``first`` (M,) int64, the first row of each
    group in row order, and ``rows`` (N,) int64, each row's group as an index into ``first``."""
    keys = np.asarray(keys)
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = keys.reshape(len(keys), -1)
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # np.unique numbers the groups by key; renumber them by first row
    renumber = np.empty_like(order)
    renumber[order] = np.arange(len(order))
    return first[order].astype(np.int64), renumber[group.reshape(-1)].astype(np.int64)


def window_groups(scale_index: torch.Tensor | np.ndarray,
                  cells: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows grouped by the scale and cells they are pooled from, which give them equal SPP vectors.

    scale_index (N,), cells (N, 4) as :meth:`SPPFeatureExtractor.window_cells` returns them ->
    ``first`` (M,) int64, the first window of each group in window order, and ``rows`` (N,) int64,
    each window's group as an index into ``first`` (so window ``i`` pools like ``first[rows[i]]``).
    """
    return first_of_groups(np.column_stack([np.asarray(torch.as_tensor(scale_index).cpu()).reshape(-1, 1),
                                            np.asarray(torch.as_tensor(cells).cpu()).reshape(-1, 4)]))


def distinct_windows(scale_index: torch.Tensor | np.ndarray, cells: torch.Tensor | np.ndarray) -> np.ndarray:
    """The first of each group of windows pooled at the same scale from the same cells.

    scale_index (N,), cells (N, 4) as :meth:`SPPFeatureExtractor.window_cells` returns them ->
    sorted (M,) int64 window indices, M <= N. Such windows have identical SPP vectors; the
    official code's hard-negative mining (``spp_train.m``, ``dedup`` in
    ``spp_features_convX_to_poolX.m``) keeps one of each group (recipe §7).
    """
    return window_groups(scale_index, cells)[0]


def build_extractor(backbone: Backbone, config: FeatureConfig, device: torch.device | str = "cpu",
                    cache: Cache | None = None, weights_id: str = "") -> WindowFeatureExtractor:
    """The window-feature extractor of ``config.mode``: SPP-net's (conv once) or R-CNN's (conv per window),
    both a :class:`WindowFeatureExtractor`."""
    if config.mode == "spp":
        return SPPFeatureExtractor(backbone, config, device, cache=cache, weights_id=weights_id)
    if config.mode == "rcnn":
        from features.rcnn import RCNNFeatureExtractor

        return RCNNFeatureExtractor(backbone, config, device)
    raise ValueError(f"unknown feature mode {config.mode!r}; choose 'spp' or 'rcnn'")
