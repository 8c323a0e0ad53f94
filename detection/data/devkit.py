"""Devkit result files: writing and reading the per-class detection lists.

Devkit result files (recipe §10): one ``<prefix>_<split>_<class>.txt`` per class, one line per
detection, ``<image_id> <score> <x1> <y1> <x2> <y2>`` with the devkit's 1-based pixel indices.
Coordinates are written with one decimal as py-faster-rcnn's ``_write_voc_results_file`` does;
scores with six (py-faster-rcnn's three create ties that the evaluator then breaks by file order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from detection.core.cache import atomic_write_bytes
from detection.core.detections import Detections, check_labels


def devkit_results_path(results_dir: str | Path, split: str, class_name: str, prefix: str = "comp4_det") -> Path:
    return Path(results_dir) / f"{prefix}_{split}_{class_name}.txt"


def _class_lines(image_id: str, dets: Detections, num_classes: int) -> list[tuple[int, str]]:
    """(label, line) of each detection of one image, coordinates shifted to 1-based."""
    if not image_id or any(c.isspace() for c in image_id):
        raise ValueError(f"image id {image_id!r} cannot be written to a devkit file (empty or with whitespace)")
    labels = np.asarray(dets.labels, dtype=np.int64).reshape(-1)
    check_labels(labels, num_classes, image_id)
    boxes = np.asarray(dets.boxes, dtype=np.float64).reshape(-1, 4) + 1
    scores = np.asarray(dets.scores, dtype=np.float64).reshape(-1)
    return [(int(label), f"{image_id} {score:.6f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}\n")
            for label, score, (x1, y1, x2, y2) in zip(labels, scores, boxes.tolist())]


def write_devkit_results(out_dir: str | Path, split: str, classes: tuple[str, ...] | list[str],
                         detections: dict[str, Detections], prefix: str = "comp4_det") -> list[Path]:
    """Write every class's file (empty when it has no detection), each atomically; return their paths.

    Lines follow ``detections``' image order, then each image's detection order.
    """
    lines: list[list[str]] = [[] for _ in classes]
    for image_id, dets in detections.items():
        for label, line in _class_lines(image_id, dets, len(classes)):
            lines[label].append(line)
    paths = []
    for name, class_lines in zip(classes, lines):
        path = devkit_results_path(out_dir, split, name, prefix)
        atomic_write_bytes(path, "".join(class_lines).encode())
        paths.append(path)
    return paths


def _parse_line(path: Path, line_number: int, line: str) -> tuple[str, float, list[float]]:
    fields = line.split()
    try:
        if len(fields) == 6:
            score, *box = map(float, fields[1:])
            return fields[0], score, box
    except ValueError:
        pass
    raise ValueError(f"{path}, line {line_number}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', "
                     f"got {line.strip()!r}")


def read_devkit_results(results_dir: str | Path, split: str, classes: tuple[str, ...] | list[str],
                        prefix: str = "comp4_det") -> dict[str, Detections]:
    """The detections of devkit result files, image id -> Detections with 0-based boxes.

    A missing class file means no detections of that class; no file at all is an error, as that is
    a wrong directory, split or prefix far more often than a detector that found nothing.
    Within an image, detections are ordered by class, then by their order in the file.
    """
    paths = [devkit_results_path(results_dir, split, name, prefix) for name in classes]
    if not any(path.is_file() for path in paths):
        raise FileNotFoundError(f"{results_dir}: no {prefix}_{split}_<class>.txt result file for any of "
                                f"the {len(classes)} classes")
    per_image: dict[str, tuple[list[list[float]], list[float], list[int]]] = {}
    for label, path in enumerate(paths):
        if not path.is_file():
            continue
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id, score, box = _parse_line(path, line_number, line)
            boxes, scores, labels = per_image.setdefault(image_id, ([], [], []))
            boxes.append(box)
            scores.append(score)
            labels.append(label)
    return {
        image_id: Detections(np.array(boxes, dtype=np.float64).reshape(-1, 4) - 1, np.array(scores, dtype=np.float64),
                             np.array(labels, dtype=np.int64))
        for image_id, (boxes, scores, labels) in per_image.items()
    }
