"""How big the conv cache is per image and how fast it reads, and what that makes for a whole data set.

Sizes come from the maps' shapes, found by running the backbone on PyTorch's ``meta`` device (shape
inference, no arithmetic), so vgg16 at 1200 px costs nothing; the bytes are those of real entries
written by :class:`~detection.core.cache.Cache`. The reference point ("npz") is the format the cache
used before: the same fp16 arrays in an uncompressed ``np.savez`` archive, read whole by ``np.load``.

Read speed is measured on ``copies`` entries of one image's real maps, read back as the stages do
(every scale decoded and converted to float32, as pooling does; or one scale, as a window pooled at
one scale needs) from a cold page cache (each file dropped with ``posix_fadvise(DONTNEED)`` first) and from a
warm one.
"""
from __future__ import annotations

import copy
import io
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from detection.core.cache import Cache
from features.backbones import Backbone
from detection.core.config import FeatureConfig
from features.extractor import CACHE_PRECISIONS, SPPFeatureExtractor, resize_to_scale

STAGE = "conv"


def map_shapes(backbone: Backbone, height: int, width: int, scales: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(C, H_s, W_s) of the conv map at each scale of a ``height`` × ``width`` image, without computing it."""
    meta = copy.deepcopy(backbone).to("meta")
    shapes = []
    for scale in scales:
        resized = resize_to_scale(np.zeros((height, width, 3), np.uint8), scale)
        x = torch.empty((1, 3, *resized.shape[:2]), device="meta")
        shapes.append(tuple(meta(x).shape[1:]))
    return shapes


def entry_arrays(extractor: SPPFeatureExtractor, maps: list[torch.Tensor], height: int, width: int) -> dict:
    """The arrays of one conv cache entry: the maps as the extractor's precision stores them, and the image size."""
    return {**extractor.encode_maps(maps), "image_size": np.array([height, width])}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as the cache stored them before: an uncompressed ``np.savez`` archive."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@dataclass
class SizeRow:
    backbone: str
    channels: int
    cells: int  # map cells over all scales
    npz_bytes: int  # the former format (fp16)
    entry_bytes: dict[str, int]  # this cache's entry, by precision

    def dataset_gb(self, images: int, precision: str | None = None) -> float:
        """The cache for ``images`` such images, in GB: npz (None) or this cache's entries of ``precision``."""
        return images * (self.npz_bytes if precision is None else self.entry_bytes[precision]) / 1e9


def size_row(backbone: Backbone, height: int, width: int, scales: tuple[int, ...], directory: Path) -> SizeRow:
    shapes = map_shapes(backbone, height, width, scales)
    zeros = [torch.zeros(shape) for shape in shapes]
    cache, entry_bytes, npz = Cache(directory), {}, 0
    for precision in CACHE_PRECISIONS:
        extractor = SPPFeatureExtractor(backbone, FeatureConfig(scales=scales, cache_precision=precision))
        arrays = entry_arrays(extractor, zeros, height, width)
        cache.put(STAGE, backbone.name, precision, arrays, source="x")
        entry_bytes[precision] = cache.path(STAGE, backbone.name, precision).stat().st_size
        if precision == "float16":
            npz = len(npz_bytes(arrays))
    return SizeRow(backbone.name, backbone.channels, sum(h * w for _, h, w in shapes), npz, entry_bytes)


@dataclass
class ReadRow:
    method: str
    page_cache: str  # "cold" or "warm"
    seconds: float  # wall
    cpu_seconds: float
    megabytes: float  # file bytes of the entries read


def _drop_from_page_cache(paths: list[Path]) -> None:
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def read_speed(backbone: Backbone, image: np.ndarray, scales: tuple[int, ...], copies: int, directory: Path,
               one_scale: int) -> list[ReadRow]:
    """Time reading ``copies`` entries of ``image``'s maps as the conv cache did (npz) and does (mapped
    entries, fp16 and int8, every scale decoded to fp16 and converted to float32 as pooling does), and
    one scale of a mapped fp16 entry."""
    extractors = {p: SPPFeatureExtractor(backbone, FeatureConfig(scales=scales, cache_precision=p))
                  for p in CACHE_PRECISIONS}
    maps = extractors["float16"].compute_maps(image)
    cache = Cache(directory)
    paths: dict[str, list[Path]] = {"npz": [], **{p: [] for p in CACHE_PRECISIONS}}
    for precision, extractor in extractors.items():
        arrays = entry_arrays(extractor, maps, *image.shape[:2])
        for i in range(copies):
            cache.put(STAGE, precision, f"{i}", arrays, source="x")
            paths[precision].append(cache.path(STAGE, precision, f"{i}"))
            if precision == "float16":
                paths["npz"].append(directory / f"{i}.npz")
                paths["npz"][-1].write_bytes(npz_bytes(arrays))

    def npz_whole(i):
        with np.load(paths["npz"][i]) as data:
            for name in data.files:
                if name.startswith("scale"):
                    torch.from_numpy(data[name]).float()

    def entry(precision):
        def read(i):
            for fmap in extractors[precision].decode_maps(cache.get(STAGE, precision, f"{i}", source="x", mmap=True)):
                fmap.float()
        return read

    def one_scale_of_entry(i):
        torch.from_numpy(cache.get(STAGE, "float16", f"{i}", source="x", mmap=True)[f"scale{one_scale}"]).float()

    methods = [("npz (before), every scale", paths["npz"], npz_whole),
               ("mapped fp16 entry, every scale", paths["float16"], entry("float16")),
               ("mapped int8 entry, every scale", paths["int8"], entry("int8")),
               (f"mapped fp16 entry, one scale ({scales[one_scale]})", paths["float16"], one_scale_of_entry)]
    rows = []
    for name, files, read in methods:
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        for page_cache in ("cold", "warm"):
            if page_cache == "cold":
                _drop_from_page_cache(files)
            wall, cpu = time.perf_counter(), _cpu()
            for i in range(copies):
                read(i)
            rows.append(ReadRow(name, page_cache, time.perf_counter() - wall, _cpu() - cpu, megabytes))
    return rows


def format_report(sizes: list[SizeRow], reads: list[ReadRow], copies: int, images: int, height: int,
                  width: int, scales: tuple[int, ...]) -> str:
    lines = [f"conv cache per {width}x{height} image at scales {','.join(map(str, scales))}, and for {images} images",
             "",
             "| backbone | channels | map cells | npz fp16 (before) | entry fp16 | entry int8 | "
             "npz fp16, data set | entry fp16, data set | entry int8, data set |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sizes:
        lines.append(f"| {r.backbone} | {r.channels} | {r.cells} | {r.npz_bytes / 1e6:.3f} MB | "
                     f"{r.entry_bytes['float16'] / 1e6:.3f} MB | {r.entry_bytes['int8'] / 1e6:.3f} MB | "
                     f"{r.dataset_gb(images):.1f} GB | {r.dataset_gb(images, 'float16'):.1f} GB | "
                     f"{r.dataset_gb(images, 'int8'):.1f} GB |")
    lines += ["", f"reading {copies} entries of one image's maps (MB: file bytes read; rates by wall and by CPU time)",
              "", "| read | page cache | wall s | CPU s | MB/s (wall) | maps/s (wall) | MB/s (CPU) | maps/s (CPU) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in reads:
        lines.append(f"| {r.method} | {r.page_cache} | {r.seconds:.3f} | {r.cpu_seconds:.3f} | "
                     f"{r.megabytes / r.seconds:.0f} | {copies / r.seconds:.1f} | "
                     f"{r.megabytes / r.cpu_seconds:.0f} | {copies / r.cpu_seconds:.1f} |")
    return "\n".join(lines)


def temporary_directory(under: str | None) -> tempfile.TemporaryDirectory:
    return tempfile.TemporaryDirectory(prefix="sppnet-cache-bench-", dir=under)
