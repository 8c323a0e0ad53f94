"""The feature scale of recipe §7: features are multiplied by ``target / mean L2 norm``.

As R-CNN's ``rcnn_feature_stats.m`` / ``rcnn_scale_features.m``: the mean norm is taken over up
to 200 random boxes in each of up to 200 random training images, with a fixed seed, and scaling
to a mean norm of 20 lets one value of the SVM's C suit any feature layer.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def sample_indices(boxes_per_image: Sequence[int], n_images: int = 200, n_boxes: int = 200,
                   seed: int = 3) -> list[tuple[int, np.ndarray]]:
    """Which boxes to measure: ``[(image index, sorted box indices (n,)), ...]`` by image index.

    ``boxes_per_image[i]`` is the number of boxes of image i. Draws ``min(n_images, #images)``
    distinct images, then ``min(n_boxes, boxes_per_image[i])`` distinct boxes in each, from one
    generator seeded with ``seed``, so the same inputs always give the same sample. Images without
    boxes are left out.
    """
    counts = np.asarray(boxes_per_image, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    images = np.sort(rng.choice(len(counts), size=min(n_images, len(counts)), replace=False))
    picks = []
    for i in images:
        if counts[i] > 0:
            boxes = rng.choice(counts[i], size=min(n_boxes, counts[i]), replace=False)
            picks.append((int(i), np.sort(boxes)))
    return picks


def feature_norm_scale(sample_features: Iterable[np.ndarray] | np.ndarray, target: float = 20.0) -> float:
    """``target`` divided by the mean L2 norm of the sampled feature vectors.

    ``sample_features``: one (N, D) array, or an iterable of (n_i, D) arrays (e.g. a generator
    computing the features of each image picked by :func:`sample_indices`); the mean is over all
    vectors together, not per image, as in R-CNN.
    """
    chunks = [sample_features] if isinstance(sample_features, np.ndarray) else sample_features
    total, count = 0.0, 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float64)
        norms = np.linalg.norm(chunk.reshape(-1, chunk.shape[-1]), axis=1)
        total += float(norms.sum())
        count += len(norms)
    if count == 0 or total == 0.0:
        raise ValueError("no non-zero feature vectors to measure the feature norm on")
    return target / (total / count)
