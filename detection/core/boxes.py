"""Box utilities shared by every stage.

Convention inside the code: boxes are float arrays of shape (N, 4) holding 0-based *inclusive*
pixel indices (x1, y1, x2, y2), so a box's width is x2 - x1 + 1 (R-CNN / VOC devkit convention,
recipe preamble). VOC files are 1-based (converted in :mod:`detection.data.voc` and the result-file
writers); COCO's (x, y, w, h) is converted in the COCO writer.
"""
from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) -> (N,) areas with inclusive pixel extents."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, 4), (M, 4) -> (N, M) intersection over union, inclusive extents (+1) as the devkit."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + 1
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + 1
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).eps)


def max_overlaps(boxes: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 4), (G, 4) -> best IoU (N,) and the index of that GT box (N,); zeros / -1 when G == 0."""
    n = len(boxes)
    if len(gt_boxes) == 0:
        return np.zeros(n), np.full(n, -1, dtype=np.int64)
    iou = box_iou(boxes, gt_boxes)
    best = iou.argmax(axis=1)
    return iou[np.arange(n), best], best


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) -> (N, 4) clipped to pixel indices [0, width-1] × [0, height-1]."""
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height - 1)
    return out


def flip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """(N, 4) -> (N, 4) boxes of the horizontally flipped image of the given width."""
    out = np.array(boxes, dtype=np.float64, copy=True).reshape(-1, 4)
    out[:, 0] = width - 1 - boxes[:, 2]
    out[:, 2] = width - 1 - boxes[:, 0]
    return out


def remove_small_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """(N, 4) -> (K,) indices of boxes at least ``min_size`` pixels wide and tall."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return np.flatnonzero((w >= min_size) & (h >= min_size))


def unique_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) -> (K,) sorted indices of the first occurrence of each distinct box."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    _, first = np.unique(np.ascontiguousarray(boxes), axis=0, return_index=True)
    return np.sort(first)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """(N, 4), (N,) -> indices kept, by decreasing score.

    torchvision's NMS with inclusive extents: x2 and y2 are shifted by +1 so that its continuous
    areas equal the devkit's (x2 - x1 + 1)(y2 - y1 + 1).
    """
    return batched_nms(boxes, scores, np.zeros(len(boxes), dtype=np.int64), iou_threshold)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """(N, 4), (N,), (N,) -> indices kept, NMS run independently within each group (class)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    # imported here: the proposal workers use this module and need neither (about 700 MB each)
    import torch
    import torchvision

    t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4).clone()
    t[:, 2:] += 1
    keep = torchvision.ops.batched_nms(
        t, torch.as_tensor(np.asarray(scores, dtype=np.float32)), torch.as_tensor(np.asarray(groups)), iou_threshold
    )
    return keep.numpy()


def _centres_and_sizes(boxes: np.ndarray):
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def bbox_regression_targets(proposals: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """(N, 4), (N, 4) -> (N, 4) targets (dx, dy, dw, dh) of recipe §8.

    dx = (gx - px)/pw, dy = (gy - py)/ph, dw = log(gw/pw), dh = log(gh/ph), with centres and
    inclusive sizes as in R-CNN's code.
    """
    px, py, pw, ph = _centres_and_sizes(proposals)
    gx, gy, gw, gh = _centres_and_sizes(gt_boxes)
    return np.stack([(gx - px) / pw, (gy - py) / ph, np.log(gw / pw), np.log(gh / ph)], axis=1)


def apply_bbox_deltas(proposals: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """(N, 4), (N, 4) -> (N, 4) boxes: the inverse of :func:`bbox_regression_targets`."""
    px, py, pw, ph = _centres_and_sizes(proposals)
    deltas = np.asarray(deltas, dtype=np.float64).reshape(-1, 4)
    cx = px + deltas[:, 0] * pw
    cy = py + deltas[:, 1] * ph
    w = pw * np.exp(deltas[:, 2])
    h = ph * np.exp(deltas[:, 3])
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w - 1, cy + 0.5 * h - 1], axis=1)


def to_coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) 0-based inclusive (x1, y1, x2, y2) -> (N, 4) COCO [x, y, w, h]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2] + 1], axis=1)


def from_coco_boxes(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) COCO [x, y, w, h] -> (N, 4) 0-based inclusive (x1, y1, x2, y2)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:] - 1], axis=1)
