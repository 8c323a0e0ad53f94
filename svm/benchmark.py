"""The SVM stage at VOC size on generated features: time and peak memory of hard-negative mining.

No conv layers: :func:`synthetic_mining_data` generates what the SVM stage reads, per image N
windows of D non-negative (ReLU-like) features scaled to mean norm 20 (recipe §7) with their (N, K)
overlaps, and the positives. Features are drawn from a fixed bank of background rows, each scaled
by a random factor, plus a class direction: full strength on the objects (the positives and
windows overlapping them), partial on a few background windows per image (the hard negatives, a
fraction ``hard_fraction`` of the windows), so mining keeps a realistic, tunable number of them.
:func:`benchmark_svm` runs :class:`~svm.hard_negatives.HardNegativeSVMs` on it and reports wall and
CPU time, peak RSS and the cache sizes (docs/benchmarks.md, "SVM stage at VOC size").
"""
from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the command line reads SyntheticMining's defaults without scikit-learn
    from svm.hard_negatives import HardNegativeSVMs


@dataclass(frozen=True)
class SyntheticMining:
    """The generated SVM-stage input (defaults: VOC 2007's shape with 12,800-d pool5 features)."""

    num_images: int = 1000
    windows: int = 2000  # per image
    dim: int = 12800  # ZF-5 / AlexNet pool5: 256 channels x 50 pyramid bins
    num_classes: int = 20
    objects_per_image: int = 3  # VOC 2007 trainval: 15,662 objects in 5,011 images
    object_window_fraction: float = 0.03  # windows with IoU >= 0.3 with an object: not its negatives
    hard_fraction: float = 0.01  # background windows carrying part of a class direction
    hard_strength: tuple[float, float] = (0.2, 0.6)  # ... times a full object's
    bank_rows: int = 4096
    class_support: float = 0.05  # fraction of the dimensions a class direction is non-zero on
    seed: int = 0


class _Generator:
    def __init__(self, spec: SyntheticMining):
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        bank = np.maximum(rng.standard_normal((spec.bank_rows, spec.dim), dtype=np.float32), 0)
        bank *= 20.0 / np.linalg.norm(bank, axis=1).mean()  # mean norm 20, as after the feature scale (§7)
        self.bank = bank
        directions = np.abs(rng.standard_normal((spec.num_classes, spec.dim), dtype=np.float32))
        support = rng.random((spec.num_classes, spec.dim)) < spec.class_support
        support[np.arange(spec.num_classes), rng.integers(0, spec.dim, spec.num_classes)] = True  # never empty
        directions *= support
        self.directions = 20.0 * directions / np.linalg.norm(directions, axis=1, keepdims=True)

    def _rows(self, rng: np.random.Generator, n: int) -> np.ndarray:
        rows = self.bank[rng.integers(0, len(self.bank), n)]
        rows *= rng.uniform(0.7, 1.3, (n, 1)).astype(np.float32)
        return rows

    def positives(self) -> tuple[np.ndarray, np.ndarray]:
        spec = self.spec
        rng = np.random.default_rng([spec.seed, 1])
        labels = self.image_classes(np.random.default_rng([spec.seed, 2]))
        X = self._rows(rng, len(labels))
        X += rng.uniform(0.8, 1.2, (len(labels), 1)).astype(np.float32) * self.directions[labels]
        return X, labels

    def image_classes(self, rng: np.random.Generator) -> np.ndarray:
        spec = self.spec
        return rng.integers(0, spec.num_classes, spec.num_images * spec.objects_per_image)

    def images(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        spec = self.spec
        objects = self.image_classes(np.random.default_rng([spec.seed, 2])).reshape(spec.num_images, -1)
        n_object = int(round(spec.object_window_fraction * spec.windows))
        n_hard = int(round(spec.hard_fraction * spec.windows))
        for image in range(spec.num_images):
            rng = np.random.default_rng([spec.seed, 3, image])
            features = self._rows(rng, spec.windows)
            overlaps = np.zeros((spec.windows, spec.num_classes), np.float32)
            present = objects[image]
            overlaps[:, present] = rng.uniform(0, 0.3, (spec.windows, len(present)))
            chosen = rng.permutation(spec.windows)[: n_object + n_hard]
            on_object, hard = chosen[:n_object], chosen[n_object:]
            label = present[rng.integers(0, len(present), n_object)]
            iou = rng.uniform(0.3, 1.0, n_object).astype(np.float32)
            overlaps[on_object, label] = iou
            features[on_object] += iou[:, None] * self.directions[label]
            hard_label = rng.integers(0, spec.num_classes, n_hard)
            strength = rng.uniform(*spec.hard_strength, n_hard).astype(np.float32)
            features[hard] += strength[:, None] * self.directions[hard_label]
            yield features, overlaps


def synthetic_mining_data(spec: SyntheticMining) -> tuple[np.ndarray, np.ndarray, Iterator[tuple[np.ndarray, np.ndarray]]]:
    """Positives X_pos (P, D) float32, their labels (P,) and a one-pass generator of the images'
    (features (N, D) float32, overlaps (N, K)), deterministic from ``spec.seed``; P =
    num_images * objects_per_image."""
    generator = _Generator(spec)
    X_pos, y_pos = generator.positives()
    return X_pos, y_pos, generator.images()


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def benchmark_svm(spec: SyntheticMining, svms: HardNegativeSVMs) -> dict:
    """Run ``svms``' hard-negative mining on :func:`synthetic_mining_data` (``spec``); returns a plain dict:
    the spec, wall and CPU seconds, peak RSS before and after (bytes), retrains, the store's
    sizes (``store_stats_``), the final negatives per class and every retrain's (class, image,
    positives, negatives, evicted)."""
    X_pos, y_pos, images = synthetic_mining_data(spec)
    rss_before = peak_rss_bytes()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    # positive p is an object of image p // objects_per_image (``_Generator.image_classes``)
    svms.fit(X_pos, y_pos, images, num_classes=spec.num_classes,
             pos_images=np.arange(len(y_pos)) // spec.objects_per_image)
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    final = {}
    for entry in svms.history_:
        final[entry["class"]] = entry["n_neg"] - entry["n_evicted"]
    return {
        "spec": asdict(spec), "wall_s": wall, "cpu_s": cpu, "peak_rss_before_bytes": rss_before,
        "peak_rss_bytes": peak_rss_bytes(), "positives_bytes": X_pos.nbytes, "retrains": len(svms.history_),
        "store": svms.store_stats_, "cache_dtype": svms.cache_dtype,
        "final_negatives_per_class": [final.get(j, 0) for j in range(spec.num_classes)],
        "max_negatives_trained": max((e["n_neg"] for e in svms.history_), default=0),
        "retrain_sizes": [(e["class"], e["image"], e["n_pos"], e["n_neg"], e["n_evicted"]) for e in svms.history_],
    }
