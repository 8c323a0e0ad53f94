"""Which scale each window is pooled at, and where it lands on that scale's feature map.

Section numbers (§N) refer to docs/recipe.md. Boxes are (x1, y1, x2, y2) 0-based
inclusive pixel indices (see :mod:`detection.core.boxes`); feature-map cells are 0-based inclusive
indices. All functions take and return torch tensors on the boxes' device, and loop over scales
at most, never over boxes.

Paper vs official code (ShaoqingRen/SPP_net):

* scale choice: the paper picks the scale whose scaled window area is closest to 224²; the
  official ``spm_expected_scale.m`` computes the image scale at which the window would be
  13·16 = 208 px on a side and picks the nearest scale linearly.
* projection: the paper's appendix snaps window edges strictly inside, to cell centres; the
  official ``spm_pool_caffe_mex.cpp`` / ``spm_response_boxes.m`` first moves each edge 6.5 px
  inward, then rounds to the nearest cell centre.
"""
from __future__ import annotations

from typing import Sequence

import torch

SCALE_RULES = ("paper", "official")
PROJECTION_RULES = ("paper", "official")


def image_scale_factors(height: int, width: int, scales: Sequence[int]) -> torch.Tensor:
    """Resize factor per scale: the image's shorter side becomes s (§4).

    Returns (S,) float64 on the CPU: s / min(height, width) for each s in ``scales``.
    """
    return torch.as_tensor(scales, dtype=torch.float64) / min(height, width)


def choose_scales(boxes: torch.Tensor, image_size: tuple[int, int], scales: Sequence[int],
                  rule: str = "paper", paper_target_side: int = 224,
                  official_target_side: int = 208) -> torch.Tensor:
    """The one scale each window is pooled at (§4).

    Args:
        boxes: (N, 4) windows in the *original* image's pixel coordinates.
        image_size: the original image's (height, width).
        scales: shorter-side lengths s, one per feature map.
        rule: "paper" — the scale whose scaled window area, (s / min_side)² · w·h with inclusive
            w = x2 - x1 + 1, is closest to ``paper_target_side``²;
            "official" — expected = round(``official_target_side`` · min_side / sqrt(w·h)), the
            scale at which the window would be 208 px on a side, rounded half up as MATLAB's
            ``round`` in ``spm_expected_scale.m``; then the s nearest to it, |s - expected|.

    Returns:
        (N,) int64 indices into ``scales``; ties go to the smaller index (MATLAB's ``min`` and
        :func:`torch.argmin` both return the first minimum). All zeros when there is one scale.
    """
    if rule not in SCALE_RULES:
        raise ValueError(f"unknown scale rule {rule!r}; expected one of {SCALE_RULES}")
    if len(scales) == 0:
        raise ValueError("scales must not be empty")
    # float64 so that near-ties are decided the same way on every device
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    scales_t = torch.as_tensor(scales, dtype=torch.float64, device=boxes.device)
    min_side = min(image_size)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    if rule == "paper":
        scaled_area = area[:, None] * (scales_t[None, :] / min_side) ** 2
        distance = (scaled_area - paper_target_side ** 2).abs()
    else:
        expected = torch.floor(official_target_side * min_side / area.sqrt() + 0.5)
        distance = (scales_t[None, :] - expected[:, None]).abs()
    return distance.argmin(dim=1)


def project_boxes(boxes: torch.Tensor, stride: int, first_center: float, map_size: tuple[int, int],
                  rule: str = "paper", offset: float = 6.5) -> torch.Tensor:
    """Windows in a scaled image -> inclusive cell boxes on its feature map (§2).

    Cell k's receptive field is centred at pixel ``first_center + stride * k`` (c0 and S are
    properties of the backbone: c0 = 20 for ZF-5, 0-based; the official code's ``offset0`` = 21
    is 1-based). Each coordinate is projected independently:

    * "paper" (appendix A, "Mapping a Window to Feature Maps"): with every layer padded
      floor(k/2), cell x' is centred at pixel S·x', and a window maps to
      x0' = floor(x0/S) + 1 (left/top), x1' = ceil(x1/S) - 1 (right/bottom), i.e. the first and
      last cell centres strictly inside the window. "If the padding is not floor(k/2), we need to
      add a proper offset to x": here x is measured from cell 0's centre, x - c0.
    * "official" (``spm_pool_caffe_mex.cpp``, shown 0-based): each edge moves ``offset`` px
      inward, then snaps to the nearest cell centre: x0' = floor((x0 - c0 + o)/S + 0.5),
      x1' = ceil((x1 - c0 - o)/S - 0.5).

    For both rules, a window narrower than the snapping allows (x0' > x1') collapses to the one
    cell floor((x0' + x1') / 2), as the official code's integer ``(x0 + x1) / 2`` on its 1-based
    (positive) indices; rows alike. Last, coordinates are clamped to the map, which also keeps
    windows that reach past the image on it.

    Args:
        boxes: (N, 4) windows in the *scaled* image's pixel coordinates.
        stride: S, the backbone's cumulative stride in pixels.
        first_center: c0, the pixel centre of cell 0's receptive field.
        map_size: the feature map's (H', W').
        rule: "paper" or "official".
        offset: o, the official rule's inward shift in pixels (ignored by "paper").

    Returns:
        (N, 4) int64 cell boxes (x0', y0', x1', y1'), 0 <= x0' <= x1' <= W'-1 and
        0 <= y0' <= y1' <= H'-1.
    """
    if rule not in PROJECTION_RULES:
        raise ValueError(f"unknown projection rule {rule!r}; expected one of {PROJECTION_RULES}")
    # float64, and the official code's order of operations, so that edges exactly on a cell
    # centre or half-way between two snap the same way as there
    boxes = boxes.to(torch.float64).reshape(-1, 4)
    start, end = boxes[:, :2] - first_center, boxes[:, 2:] - first_center
    if rule == "paper":
        start = torch.floor(start / stride) + 1
        end = torch.ceil(end / stride) - 1
    else:
        start = torch.floor((start + offset) / stride + 0.5)
        end = torch.ceil((end - offset) / stride - 0.5)
    start, end = start.to(torch.int64), end.to(torch.int64)
    middle = torch.div(start + end, 2, rounding_mode="floor")
    collapsed = start > end
    cells = torch.cat([torch.where(collapsed, middle, start), torch.where(collapsed, middle, end)], dim=1)
    height, width = map_size
    cells[:, 0::2] = cells[:, 0::2].clamp(0, width - 1)
    cells[:, 1::2] = cells[:, 1::2].clamp(0, height - 1)
    return cells
