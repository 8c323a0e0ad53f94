"""Filtering the records of a finished `sppnet detect` again (threshold, classes, top-k), without the model or the images."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from detection.core.cache import atomic_write_bytes
from detection.runs.batch.errors import BatchError
from detection.runs.batch.outputs import (
    FAILED, MODEL_CLASSES, PREDICTIONS, OutputDir, iter_records, read_failures, record_line,
)
from detection.runs.batch.records import DetectionFilter, class_indices, prediction_record, record_detections

FILTERS = ("score_thresh", "min_prob", "topk", "classes")


def refilter(source: str | os.PathLike, out: str | os.PathLike, score_thresh: float | None = None,
             topk: int | None = None, classes: Sequence[str] | None = None,
             min_prob: float | None = None) -> tuple[int, dict[str, str]]:
    """Write the records of the run in ``source``, filtered again, as a run of its own in ``out``.

    Filters only remove: a threshold below the one ``source`` was made with keeps what it kept.
    ``min_prob`` needs records with probabilities (a calibrated model's run); a record without
    them is a :class:`BatchError` naming the file.
    ``out`` gets ``predictions.jsonl``, ``detections.json``, ``failed.tsv`` (``source``'s) and a
    ``run.json`` naming ``source`` and both runs' filters; pictures (``vis/``) are not redrawn.
    The records are streamed, one at a time. Returns the number of images and the failures.
    """
    src, dst = OutputDir(Path(source)), OutputDir(Path(out))
    settings = src.settings()
    if MODEL_CLASSES not in settings:
        raise BatchError(f"{src.root}: its run.json has no class list (made by an older sppnet); rerun the same "
                         "`sppnet detect` into it once (it skips the images done) to add it")
    model_classes = tuple(settings[MODEL_CLASSES])
    if not (src.root / PREDICTIONS).is_file():
        raise BatchError(f"{src.root}: no {PREDICTIONS} (a sharded run not merged yet?)")
    if dst.root.resolve() == src.root.resolve():
        raise BatchError(f"{dst.root}: the filtered run needs another --out than the run it filters")
    keep = DetectionFilter(score_thresh, topk, class_indices(classes, model_classes) if classes else None, min_prob)
    dst.root.mkdir(parents=True, exist_ok=True)
    with dst.lock():
        dst.check_settings({"filtered_from": str(src.root.resolve()), "model_sha1": settings.get("model_sha1"),
                            "source_filters": {name: settings.get(name) for name in FILTERS},
                            "score_thresh": score_thresh, "min_prob": min_prob, "topk": topk,
                            "classes": list(classes) if classes else None},
                           model_classes)
        atomic_write_bytes(dst.root / PREDICTIONS, _filtered_lines(src.root / PREDICTIONS, keep, model_classes))
        return dst.merge(model_classes, read_failures(src.root / FAILED))


def _filtered_lines(path: Path, keep: DetectionFilter, classes: Sequence[str]) -> Iterator[bytes]:
    for record in iter_records(path):
        try:
            kept = keep(record_detections(record, classes))
        except BatchError as error:
            raise BatchError(f"{record['file']}: {error}") from None
        filtered = prediction_record(record["file"], (record["height"], record["width"]), kept, classes,
                                     record.get("frame"), record.get("time"))
        yield record_line(filtered).encode("utf-8")
