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
from detection.core.detections import ClassDetections, Detections, by_class
from detection.core.errors import SppnetError


class ResultsError(SppnetError, ValueError):
    """Detections that cannot be written or evaluated (a malformed result line, results of another
    split, an image id a result file cannot hold); the message names the file, line or image."""


def devkit_results_path(results_dir: str | Path, split: str, class_name: str, prefix: str = "comp4_det") -> Path:
    return Path(results_dir) / f"{prefix}_{split}_{class_name}.txt"


def check_image_id(image_id: str) -> None:
    """Raise :class:`ResultsError` for an image id that a devkit line cannot hold (empty or with whitespace)."""
    if not image_id or any(c.isspace() for c in image_id):
        raise ResultsError(f"image id {image_id!r} cannot be written to a devkit file (empty or with whitespace)")


def _lines(results: ClassDetections) -> str:
    """One class's detections as a devkit file's text, coordinates shifted to 1-based."""
    boxes = np.asarray(results.boxes, dtype=np.float64).reshape(-1, 4) + 1
    return "".join(f"{image_id} {score:.6f} {x1:.1f} {y1:.1f} {x2:.1f} {y2:.1f}\n"
                   for image_id, score, (x1, y1, x2, y2) in zip(results.image_ids.tolist(),
                                                                 results.scores.tolist(), boxes.tolist()))


def write_devkit_results(out_dir: str | Path, split: str, classes: tuple[str, ...] | list[str],
                         detections: dict[str, Detections], prefix: str = "comp4_det") -> list[Path]:
    """Write every class's file (empty when it has no detection), each atomically; return their paths.

    Lines follow ``detections``' image order, then each image's detection order (:func:`by_class`).
    """
    for image_id in detections:
        check_image_id(image_id)
    paths = []
    for name, results in zip(classes, by_class(detections, len(classes))):
        path = devkit_results_path(out_dir, split, name, prefix)
        atomic_write_bytes(path, _lines(results).encode())
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
    raise ResultsError(f"{path}, line {line_number}: expected '<image_id> <score> <x1> <y1> <x2> <y2>', "
                     f"got {line.strip()!r}")


def read_devkit_results(results_dir: str | Path, split: str, classes: tuple[str, ...] | list[str],
                        prefix: str = "comp4_det") -> list[ClassDetections]:
    """The detections of devkit result files, one :class:`ClassDetections` per class, in file order
    (which decides ties in score, as in the devkit), boxes 0-based.

    A missing class file means no detections of that class; no file at all is an error, as that is
    a wrong directory, split or prefix far more often than a detector that found nothing.
    """
    paths = [devkit_results_path(results_dir, split, name, prefix) for name in classes]
    if not any(path.is_file() for path in paths):
        raise FileNotFoundError(f"{results_dir}: no {prefix}_{split}_<class>.txt result file for any of "
                                f"the {len(classes)} classes")
    results = []
    for path in paths:
        lines = path.read_text().splitlines() if path.is_file() else []
        parsed = [_parse_line(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
        if not parsed:
            results.append(ClassDetections.empty())
            continue
        ids, scores, boxes = zip(*parsed)
        results.append(ClassDetections(np.array(ids, dtype=str), np.array(scores, dtype=np.float64),
                                       np.array(boxes, dtype=np.float64).reshape(-1, 4) - 1))
    return results
