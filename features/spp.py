"""Spatial pyramid pooling of windows on a conv feature map (recipe §3).

Section numbers (§N) refer to docs/recipe.md. Windows arrive as inclusive feature-map
cell boxes, as :func:`features.projection.project_boxes` returns them.

How the bins are pooled (this is the hot path of detection after the conv layers; see
docs/benchmarks.md for the measurements behind it):

* Only the levels that divide no other level are pooled from the map ({6} of {1, 2, 3, 6}); each
  other level is taken from a multiple of it, exactly, as maxima of groups of its bins. Bin j of level n spans cells
  floor(j·w/n) .. ceil((j+1)·w/n) - 1; with m = r·n, the r consecutive level-m bins r·j .. r·j+r-1
  overlap or touch (bin i+1 starts at floor((i+1)·w/m) <= ceil((i+1)·w/m), one past bin i's end),
  so their union runs from floor(r·j·w/m) = floor(j·w/n) to ceil((r·j+r)·w/m) - 1 =
  ceil((j+1)·w/n) - 1: level n's bin j exactly.
* A bin's maximum is read from a 2-D sparse table (range-maximum query): table[a][b] holds, at
  each cell, the maximum over the 2^a × 2^b block starting there, so any bin of h × w cells is the
  maximum of four overlapping blocks of 2^⌊log2 h⌋ × 2^⌊log2 w⌋ cells at its corners. That is
  four reads of a channel vector per bin, whatever its size, where pooling each bin by scanning
  it costs its area. The table is channel-last so each read is one contiguous row.
"""
from __future__ import annotations

import mmap
from typing import Sequence

import torch
import torch.nn.functional as F

# Bytes of gathered channel vectors per chunk of windows: large enough to amortise the per-op
# overhead, small enough (on the CPU) to stay in the last-level cache between gather and max.
_CHUNK_BYTES = {"cpu": 1 << 23}
_CHUNK_BYTES_OTHER = 1 << 28
# glibc maps allocations of 32 MiB and up afresh on every call (smaller ones are reused), so an
# output this large is page-faulted in 4 KiB at a time: see _new_output.
_HUGE_PAGE_MIN_BYTES = 1 << 25


def spp_output_dim(channels: int, levels: Sequence[int]) -> int:
    """Length of one window's pyramid vector: C · Σ n² (12,800 for 256 channels and {1, 2, 3, 6})."""
    return channels * sum(n * n for n in levels)


def _bin_spans(lo: torch.Tensor, hi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive cells lo..hi (N,) -> first and last cell (N, n) of each of the n bins along one axis.

    Bin i of a window w cells wide spans cells floor(i·w/n) .. ceil((i+1)·w/n) - 1 from its left
    edge (§3, the official ``spm_pool_caffe_mex.cpp``); bins overlap when n does not divide w and
    repeat cells when w < n.
    """
    i = torch.arange(n, device=lo.device)
    size = (hi - lo + 1)[:, None]
    first = lo[:, None] + torch.div(i * size, n, rounding_mode="floor")
    last = lo[:, None] - torch.div(-(i + 1) * size, n, rounding_mode="floor") - 1  # ceil via -floor(-a)
    return first, last


def _floor_log2(x: torch.Tensor) -> torch.Tensor:
    """Positive int64 -> int64 ⌊log2 x⌋, exactly (counting powers of two, no floating point)."""
    top = max(int(x.max()).bit_length(), 1)
    powers = 2 ** torch.arange(1, top, device=x.device)
    return (x[..., None] >= powers).sum(dim=-1)


def _block_max_table(fmap: torch.Tensor, max_a: int, max_b: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, max_a + 1, max_b + 1, H, W, C) sparse table of block maxima.

    Entry [i, a, b, y, x] is the maximum of map i over rows y .. y + 2^a - 1 and columns
    x .. x + 2^b - 1, built by doubling. Entries whose block would leave the map are not written (and never read).
    """
    batch, channels, height, width = fmap.shape
    table = fmap.new_empty((batch, max_a + 1, max_b + 1, height, width, channels))
    table[:, 0, 0] = fmap.permute(0, 2, 3, 1)
    for a in range(1, max_a + 1):
        step = 1 << (a - 1)
        torch.maximum(table[:, a - 1, 0, :height - step], table[:, a - 1, 0, step:],
                      out=table[:, a, 0, :height - step])
    for b in range(1, max_b + 1):
        step = 1 << (b - 1)
        torch.maximum(table[:, :, b - 1, :, :width - step], table[:, :, b - 1, :, step:],
                      out=table[:, :, b, :, :width - step])
    return table


def _corner_rows(cell_boxes: torch.Tensor, batch_index: torch.Tensor, n: int, table_shape: tuple[int, ...],
                 spans: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rows of the flattened sparse table to read for level n: (N, 4, n·n) int64, bins row-major.

    Bin (y, x) is the maximum of the four blocks at its corners, each of 2^⌊log2 h⌋ × 2^⌊log2 w⌋
    cells (h × w the bin's size): together they cover the bin and stay inside it.
    """
    _, num_a, num_b, height, width = table_shape
    xs, xe, ys, ye = spans
    kx, ky = _floor_log2(xe - xs + 1), _floor_log2(ye - ys + 1)
    x_near, x_far = xs, xe - (1 << kx) + 1  # (N, n)
    y_near, y_far = ys, ye - (1 << ky) + 1
    # index of block table [b, ky, kx] at row y, column x: (((b·A + ky)·B + kx)·H + y)·W + x
    level = ((batch_index[:, None, None] * num_a + ky[:, :, None]) * num_b + kx[:, None, :]) * height  # (N, n, n)
    corners = [(level + y[:, :, None]) * width + x[:, None, :]
               for y in (y_near, y_far) for x in (x_near, x_far)]
    return torch.stack(corners, dim=1).reshape(len(cell_boxes), 4, n * n)


def _corner_max(flat: torch.Tensor, corner_rows: torch.Tensor, buffer: torch.Tensor) -> torch.Tensor:
    """Maxima of m bins from their four corner blocks: rows (4, m) of ``flat`` (R, C) -> (m, C).

    The corners are gathered into ``buffer`` (at least 4·m rows) and reduced in place there; the
    result is a view of the buffer.
    """
    corners = buffer[:corner_rows.numel()]
    torch.index_select(flat, 0, corner_rows.reshape(-1), out=corners)
    corners = corners.view(4, corner_rows.shape[1], flat.shape[1])
    torch.maximum(corners[0], corners[1], out=corners[0])
    torch.maximum(corners[2], corners[3], out=corners[2])
    return torch.maximum(corners[0], corners[2], out=corners[0])


def _new_output(num: int, dim: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (num, dim) tensor of ``like``'s dtype and device.

    A large CPU output gets its own anonymous mapping advised to use transparent huge pages:
    faulting in the 100 MB of 2,000 windows' alexnet vectors 4 KiB at a time took 38 ms on the
    benchmark CPU, a fifth of alexnet's conv time at one scale; with 2 MiB pages, 9 ms.
    """
    nbytes = num * dim * like.element_size()
    if like.device.type != "cpu" or nbytes < _HUGE_PAGE_MIN_BYTES or not hasattr(mmap, "MADV_HUGEPAGE"):
        return like.new_empty((num, dim))
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # private: shared would be shmem
    memory.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(memory, dtype=like.dtype, count=num * dim).view(num, dim)  # keeps ``memory`` alive


def _level_sources(levels: Sequence[int]) -> dict[int, int]:
    """Each level -> the level its bins are taken from: the smallest other level that is a multiple
    of it, or itself (pooled from the map) when there is none. Larger levels come first in any
    chain, so deriving in decreasing order always finds the source done."""
    unique = set(levels)
    return {n: min((m for m in unique if m != n and m % n == 0), default=n) for n in unique}


def _coarsen(bins: torch.Tensor, r: int) -> torch.Tensor:
    """(c, m, m, C) bins -> (c, m/r, m/r, C): the max over each r × r group (module docstring)."""
    num, m, _, channels = bins.shape
    # one dim at a time: amax over dims (2, 4) together takes a slow generic kernel
    return bins.view(num, m // r, r, m // r, r, channels).amax(dim=4).amax(dim=2)


def spatial_pyramid_pool(feature_map: torch.Tensor, cell_boxes: torch.Tensor,
                         levels: Sequence[int] = (1, 2, 3, 6),
                         batch_index: torch.Tensor | None = None) -> torch.Tensor:
    """Max-pool every window into a fixed-length pyramid vector (§3).

    For level n, a window of w × h cells is split into n × n bins, bin (y, x) spanning columns
    floor(x·w/n) .. ceil((x+1)·w/n) - 1 and rows alike; each bin is max-pooled per channel. Each
    level is flattened channel-major, channel · n² + y · n + x (as the official code), and
    the levels are concatenated in the order given.

    The bins are computed in exact integer arithmetic; levels dividing another level are taken
    from the finer one, and bin maxima are read from a sparse table of block maxima (module
    docstring). Every value is a max of map values, so the result is exact in any dtype.

    Args:
        feature_map: (C, H, W) or (B, C, H, W), post-ReLU.
        cell_boxes: (N, 4) int64 inclusive cells (x0, y0, x1, y1) with
            0 <= x0 <= x1 < W and 0 <= y0 <= y1 < H.
        levels: pyramid levels n, in output order.
        batch_index: (N,) int64 map of each window in a batched ``feature_map``; None = map 0.

    Returns:
        (N, C · Σ n²) tensor of ``feature_map``'s dtype and device.

    Memory: besides the output, a table of (1 + ⌊log2 h⌋)(1 + ⌊log2 w⌋) copies of the map, h × w
    the largest bin pooled from the map, and one chunk of gathered vectors.
    """
    fmap = feature_map if feature_map.dim() == 4 else feature_map.unsqueeze(0)
    batch, channels, height, width = fmap.shape
    cell_boxes = cell_boxes.to(device=fmap.device, dtype=torch.int64).reshape(-1, 4)
    num = len(cell_boxes)
    if batch_index is None:
        batch_index = torch.zeros(num, dtype=torch.int64, device=fmap.device)
    batch_index = batch_index.to(device=fmap.device, dtype=torch.int64).reshape(num)
    # reads off the map would be silent garbage, so refuse them
    x0, y0, x1, y1 = cell_boxes.unbind(dim=1)
    invalid = ((x0 < 0) | (y0 < 0) | (x0 > x1) | (y0 > y1) | (x1 >= width) | (y1 >= height)
               | (batch_index < 0) | (batch_index >= batch))
    if invalid.any():
        raise ValueError(f"cell boxes must be inclusive cells (x0 <= x1, y0 <= y1) inside the "
                         f"{height}×{width} map, and batch indices in [0, {batch})")
    out = _new_output(num, spp_output_dim(channels, levels), fmap)
    if num == 0:
        return out
    source = _level_sources(levels)
    spans = {n: (*_bin_spans(x0, x1, n), *_bin_spans(y0, y1, n)) for n in source if source[n] == n}
    # the largest block any bin needs sets the table's depth along each axis
    max_a = max(int(_floor_log2(ye - ys + 1).max()) for _, _, ys, ye in spans.values())
    max_b = max(int(_floor_log2(xe - xs + 1).max()) for xs, xe, _, _ in spans.values())
    table = _block_max_table(fmap, max_a, max_b)
    rows = {n: _corner_rows(cell_boxes, batch_index, n, table.shape[:5], s) for n, s in spans.items()}
    flat = table.reshape(-1, channels)
    offsets = torch.tensor([0] + [channels * n * n for n in levels]).cumsum(0).tolist()
    bins_per_window = sum(n * n for n in rows)
    chunk = max(1, _CHUNK_BYTES.get(fmap.device.type, _CHUNK_BYTES_OTHER)
                // (4 * bins_per_window * channels * fmap.element_size()))
    # one buffer for every chunk's corner vectors: fresh large allocations cost page faults
    buffer = fmap.new_empty((4 * min(chunk, num) * bins_per_window, channels))
    for start in range(0, num, chunk):
        stop = min(start + chunk, num)
        pooled, used = {}, 0
        for n, corner_rows in rows.items():
            chunk_rows = corner_rows[start:stop].transpose(0, 1).reshape(4, -1)
            pooled[n] = _corner_max(flat, chunk_rows, buffer[used:]).view(stop - start, n, n, channels)
            used += chunk_rows.numel()
        for n in sorted(source, reverse=True):
            if source[n] != n:
                pooled[n] = _coarsen(pooled[source[n]], source[n] // n)
        for level, n in enumerate(levels):
            # (c, n, n, C) -> channel-major (c, C · n²), written in place
            out[start:stop, offsets[level]:offsets[level + 1]].view(stop - start, channels, n * n).copy_(
                pooled[n].reshape(stop - start, n * n, channels).transpose(1, 2))
    return out


def whole_map_pyramid_pool(feature_maps: torch.Tensor, levels: Sequence[int] = (1, 2, 3, 6)) -> torch.Tensor:
    """(B, C, H, W) -> (B, C · Σ n²): each whole map pooled as one window, the same vector as
    :func:`spatial_pyramid_pool` with the window (0, 0, W-1, H-1) (R-CNN mode's crops).

    Adaptive max pooling's n bins over H cells are the §3 bins, floor(i·H/n) .. ceil((i+1)·H/n) - 1;
    levels dividing another are taken from it as in :func:`spatial_pyramid_pool`.
    """
    source = _level_sources(levels)
    pooled = {}
    for n in sorted(source, reverse=True):
        m = source[n]
        if m == n:
            pooled[n] = F.adaptive_max_pool2d(feature_maps, n)
        else:  # (B, C, m, m) -> (B, C, n, n), the max over each (m/n)² group of bins
            pooled[n] = pooled[m].unflatten(3, (n, m // n)).amax(dim=4).unflatten(2, (n, m // n)).amax(dim=3)
    return torch.cat([pooled[n].flatten(1) for n in levels], dim=1)


def roi_pyramid_pool(feature_map: torch.Tensor, cell_boxes: torch.Tensor,
                     levels: Sequence[int] = (1, 2, 3, 6)) -> torch.Tensor:
    """The vectors of :func:`spatial_pyramid_pool` through ``torchvision.ops.roi_pool``, one call per level.

    roi_pool (ONNX ``MaxRoiPool``) splits a window of w cells into bins floor(i·w/n) .. ceil((i+1)·w/n) - 1
    as §3 does, but in float32 (i · (w/n)), so a product that should be a whole number can land a
    hair off it and move a bin edge by a cell; :func:`roi_pool_bins_exact` says for which levels and
    window sizes that never happens. This is the form for export (a graph of standard operators,
    no data-dependent shapes); :func:`spatial_pyramid_pool` stays the fast path.

    Args:
        feature_map: (C, H, W) or (1, C, H, W).
        cell_boxes: (N, 4) inclusive cells (x0, y0, x1, y1) inside the map.
        levels: pyramid levels n, in output order.

    Returns:
        (N, C · Σ n²) float, each level flattened channel-major.
    """
    from torchvision.ops import roi_pool

    fmap = feature_map if feature_map.dim() == 4 else feature_map.unsqueeze(0)
    boxes = cell_boxes.to(fmap.dtype).reshape(-1, 4)
    rois = torch.cat([torch.zeros_like(boxes[:, :1]), boxes], dim=1)  # (N, 5): batch index 0, then the box
    return torch.cat([roi_pool(fmap, rois, (n, n), 1.0).flatten(1) for n in levels], dim=1)


def roi_pool_bins_exact(levels: Sequence[int], max_cells: int) -> bool:
    """Whether roi_pool's float32 bin edges (floor/ceil of i · float32(w / n)) equal the exact §3 edges
    for every level n in ``levels`` and every window size w = 1 .. ``max_cells`` cells."""
    w = torch.arange(1, max_cells + 1, dtype=torch.int64)[:, None]
    for n in set(levels):
        i = torch.arange(n + 1, dtype=torch.int64)[None, :]
        scaled = i.float() * (w.float() / n)  # float32, as roi_pool and MaxRoiPool compute it
        exact_floor = torch.div(i * w, n, rounding_mode="floor")
        exact_ceil = -torch.div(-i * w, n, rounding_mode="floor")
        if not (torch.equal(torch.floor(scaled).long(), exact_floor) and torch.equal(torch.ceil(scaled).long(), exact_ceil)):
            return False
    return True
