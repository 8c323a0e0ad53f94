"""How many objects the proposals find: recall at IoU thresholds, and selective search settings compared.

Recall at t is the fraction of ground-truth boxes that some proposal overlaps with IoU >= t (the
measure of Hosang et al. and of selective search's own papers); VOC's difficult objects are left
out by the caller, as the evaluation leaves them out.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np

from detection.core.boxes import box_iou
from detection.core.config import ProposalConfig
from detection.core.images import load_image
from proposals.selective_search import keep_windows, search_windows


def best_overlaps(proposals: list[np.ndarray], gt_boxes: list[np.ndarray]) -> np.ndarray:
    """Per image (N_i, 4) proposals and (G_i, 4) GT boxes -> (sum G_i,) each GT box's best IoU (0 if none)."""
    best = []
    for boxes, gt in zip(proposals, gt_boxes, strict=True):
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if len(boxes) == 0:
            best.append(np.zeros(len(gt)))
        elif len(gt):
            best.append(box_iou(gt, boxes).max(axis=1))
    return np.concatenate(best) if best else np.zeros(0)


def recall(overlaps: np.ndarray, thresholds: tuple[float, ...] | np.ndarray) -> np.ndarray:
    """(G,) best IoU per GT box, (T,) thresholds -> (T,) fraction of GT boxes with best IoU >= each."""
    overlaps, thresholds = np.asarray(overlaps), np.asarray(thresholds, dtype=np.float64)
    if len(overlaps) == 0:
        return np.full(len(thresholds), np.nan)
    return (overlaps[None, :] >= thresholds[:, None]).mean(axis=1)


@dataclass
class ModeResult:
    """One selective search setting (mode and smallest window kept) measured on a set of images."""

    mode: str
    min_size: int
    recall: dict[float, float]  # IoU threshold -> recall
    boxes_per_image: float
    cpu_s_per_image: float
    wall_s_per_image: float
    num_images: int
    num_objects: int
    small_recall: dict[float, float]  # the same, for GT boxes whose longer side is under SMALL_SIDE
    num_small: int


SMALL_SIDE = 32  # "small" objects, as COCO's area 32²


def compare_modes(images: list[tuple[str | os.PathLike, np.ndarray]], config: ProposalConfig,
                  modes: tuple[str, ...], min_sizes: tuple[int, ...] | None = None,
                  thresholds: tuple[float, ...] = (0.5, 0.7)) -> list[ModeResult]:
    """Run selective search on ``images`` ((path, (G, 4) GT boxes) pairs) in each mode, and keep its
    windows under each smallest window size (``min_sizes``, default ``config.min_size``), else as
    ``config`` says. One search per image and mode serves every size.

    Times each image's search alone (image reading excluded): process CPU time, which other jobs on
    the machine do not inflate, and wall time; every size of a mode shares its mode's times.
    """
    loaded = [(load_image(path), np.asarray(gt, dtype=np.float64).reshape(-1, 4)) for path, gt in images]
    gts = [gt for _, gt in loaded]
    sides = np.concatenate([gt[:, 2:] - gt[:, :2] + 1 for gt in gts]).max(axis=1) if gts else np.zeros(0)
    count = max(len(loaded), 1)
    results = []
    for mode in modes:
        mode_config = replace(config, mode=mode)
        searched, cpu, wall = [], 0.0, 0.0
        for image, _ in loaded:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            searched.append(search_windows(image, mode_config))
            cpu += time.process_time() - cpu_start
            wall += time.perf_counter() - wall_start
        for min_size in min_sizes or (config.min_size,):
            size_config = replace(mode_config, min_size=min_size)
            boxes = [keep_windows(*found, size_config) for found in searched]
            overlaps = best_overlaps(boxes, gts)
            results.append(ModeResult(
                mode, min_size, dict(zip(thresholds, recall(overlaps, thresholds).tolist())),
                float(np.mean([len(b) for b in boxes])) if boxes else 0.0, cpu / count, wall / count, len(loaded),
                len(overlaps), dict(zip(thresholds, recall(overlaps[sides < SMALL_SIDE], thresholds).tolist())),
                int((sides < SMALL_SIDE).sum())))
    return results


def recall_table(results: list[ModeResult]) -> str:
    """The comparison as a Markdown table (recall in %; "small": GT boxes under SMALL_SIDE px)."""
    thresholds = list(results[0].recall)
    header = ("| mode | min size | boxes / image | " + " | ".join(f"recall @ {t}" for t in thresholds) + " | "
              + " | ".join(f"small ({results[0].num_small}) @ {t}" for t in thresholds)
              + " | CPU s / image | wall s / image |")
    lines = [header, "|---|" + "---:|" * (2 + 2 * len(thresholds) + 2)]
    for r in results:
        lines.append(f"| {r.mode} | {r.min_size} | {r.boxes_per_image:.0f} | "
                     + " | ".join(f"{100 * r.recall[t]:.1f}" for t in thresholds) + " | "
                     + " | ".join(f"{100 * r.small_recall[t]:.1f}" for t in thresholds)
                     + f" | {r.cpu_s_per_image:.2f} | {r.wall_s_per_image:.2f} |")
    return "\n".join(lines)
