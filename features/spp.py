"""Spatial pyramid pooling of windows on a conv feature map (recipe §3).

Section numbers (§N) refer to ../shared/spp-recipe.md. Windows arrive as inclusive feature-map
cell boxes, as :func:`features.projection.project_boxes` returns them.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import roi_pool


def spp_output_dim(channels: int, levels: Sequence[int]) -> int:
    """Length of one window's pyramid vector: C · Σ n² (12,800 for 256 channels and {1, 2, 3, 6})."""
    return channels * sum(n * n for n in levels)


def _level_bins(cell_boxes: torch.Tensor, n: int) -> torch.Tensor:
    """(N, 4) inclusive cell boxes -> (N, n, n, 4) inclusive cell boxes of their n×n bins.

    Bin i of a window w cells wide spans cells floor(i·w/n) .. ceil((i+1)·w/n) - 1 from its left
    edge (§3, the official ``spm_pool_caffe_mex.cpp``); bins overlap when n does not divide w and
    repeat cells when w < n. Row-major: [:, y, x].
    """
    x0, y0, x1, y1 = cell_boxes.unbind(dim=1)
    i = torch.arange(n, device=cell_boxes.device)

    def spans(lo, hi):
        size = (hi - lo + 1)[:, None]
        first = lo[:, None] + torch.div(i * size, n, rounding_mode="floor")
        last = lo[:, None] - torch.div(-(i + 1) * size, n, rounding_mode="floor") - 1  # ceil via -floor(-a)
        return first, last

    xs, xe = spans(x0, x1)
    ys, ye = spans(y0, y1)
    shape = (len(cell_boxes), n, n)
    return torch.stack([xs[:, None, :].expand(shape), ys[:, :, None].expand(shape),
                        xe[:, None, :].expand(shape), ye[:, :, None].expand(shape)], dim=-1)


def spatial_pyramid_pool(feature_map: torch.Tensor, cell_boxes: torch.Tensor,
                         levels: Sequence[int] = (1, 2, 3, 6),
                         batch_index: torch.Tensor | None = None) -> torch.Tensor:
    """Max-pool every window into a fixed-length pyramid vector (§3).

    For level n, a window of w × h cells is split into n × n bins, bin (y, x) spanning columns
    floor(x·w/n) .. ceil((x+1)·w/n) - 1 and rows alike; each bin is max-pooled per channel. Each
    level is flattened channel-major, channel · n² + y · n + x (as the official code), and
    the levels are concatenated in the order given.

    The bins are computed here in exact integer arithmetic and pooled by one
    :func:`torchvision.ops.roi_pool` call per level, every bin a 1×1 RoI. roi_pool's own n×n bins
    would be the same bins in exact arithmetic, but it computes them in float32 as
    floor(i · fl(w/n)), which is off by one cell for some n (e.g. w = 57, n = 7: 7 · fl(57/7) =
    57.000004, so the last bin would end one cell past the window); with a 1×1 output its bin is
    exactly the given box.

    Args:
        feature_map: (C, H, W) or (B, C, H, W), post-ReLU. torchvision's roi_pool kernels take
            float32 and float64 (current versions, CPU and CUDA), so other dtypes are pooled in
            float32 and the result cast back, which is exact: a max is one of its inputs.
        cell_boxes: (N, 4) int64 inclusive cells (x0, y0, x1, y1) with
            0 <= x0 <= x1 < W and 0 <= y0 <= y1 < H.
        levels: pyramid levels n, in output order.
        batch_index: (N,) int64 map of each window in a batched ``feature_map``; None = map 0.

    Returns:
        (N, C · Σ n²) tensor of ``feature_map``'s dtype and device.
    """
    fmap = feature_map if feature_map.dim() == 4 else feature_map.unsqueeze(0)
    batch, channels, height, width = fmap.shape
    cell_boxes = cell_boxes.to(device=fmap.device, dtype=torch.int64).reshape(-1, 4)
    num = len(cell_boxes)
    if batch_index is None:
        batch_index = torch.zeros(num, dtype=torch.int64, device=fmap.device)
    batch_index = batch_index.to(device=fmap.device, dtype=torch.int64).reshape(num)
    # roi_pool reads out of bounds (or silently clips) where these fail, so refuse them
    x0, y0, x1, y1 = cell_boxes.unbind(dim=1)
    invalid = ((x0 < 0) | (y0 < 0) | (x0 > x1) | (y0 > y1) | (x1 >= width) | (y1 >= height)
               | (batch_index < 0) | (batch_index >= batch))
    if invalid.any():
        raise ValueError(f"cell boxes must be inclusive cells (x0 <= x1, y0 <= y1) inside the "
                         f"{height}×{width} map, and batch indices in [0, {batch})")
    compute = fmap if fmap.dtype in (torch.float32, torch.float64) else fmap.float()
    pooled = []
    for n in levels:
        bins = _level_bins(cell_boxes, n)
        rois = torch.cat([batch_index[:, None, None, None].expand(num, n, n, 1), bins], dim=-1)
        out = roi_pool(compute, rois.reshape(-1, 5).to(compute.dtype), output_size=1)
        # (N·n·n, C, 1, 1) in bin order -> (N, C, n·n): channel-major flatten
        pooled.append(out.reshape(num, n * n, channels).transpose(1, 2).reshape(num, channels * n * n))
    return torch.cat(pooled, dim=1).to(feature_map.dtype)
