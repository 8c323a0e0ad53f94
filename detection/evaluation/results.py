"""Evaluating detections from wherever they are: devkit result files, a COCO detections file, memory.

Every path ends in the same per-class evaluation (:func:`~detection.evaluation.voc_eval.evaluate_by_class`
or :func:`~detection.evaluation.coco_eval.coco_evaluate`), so ``sppnet test``'s metrics.json, which is
computed from the result files it writes, equals ``sppnet eval`` of those files.
"""
from __future__ import annotations

from pathlib import Path

from detection.core.detections import ClassDetections, Detections, by_class
from detection.data.coco import read_coco_detections
from detection.data.devkit import read_devkit_results
from detection.data.records import Dataset
from detection.evaluation.coco_eval import coco_evaluate, format_coco_table
from detection.evaluation.voc_eval import METRICS as VOC_METRICS
from detection.evaluation.voc_eval import check_split_images, evaluate_by_class, format_ap_table

METRICS = (*VOC_METRICS, "coco")


def read_results(path: str | Path, dataset: Dataset) -> list[ClassDetections]:
    """Devkit result files (a directory of ``comp4_det_<split>_<class>.txt``) or a COCO detections
    file (as ``sppnet detect`` writes; images outside the split are left out) -> detections per class."""
    path = Path(path)
    if path.is_file():
        split_ids = {record.image_id for record in dataset}
        detections = {image_id: dets for image_id, dets in read_coco_detections(path, dataset.classes).items()
                      if image_id in split_ids}
        return by_class(detections, len(dataset.classes))
    return read_devkit_results(path, dataset.split, dataset.classes)


def evaluate_results(dataset: Dataset, results: str | Path | dict[str, Detections] | list[ClassDetections],
                     metric: str = "voc07", iou_threshold: float = 0.5) -> dict:
    """The metrics of ``results`` on ``dataset``: a path (:func:`read_results`), image id -> Detections,
    or detections per class. ``metric``: voc07, voc10 (at ``iou_threshold``) or coco (pycocotools).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    if isinstance(results, (str, Path)):
        results = read_results(results, dataset)
    elif isinstance(results, dict):
        check_split_images(dataset, results)
        results = by_class(results, len(dataset.classes))
    if metric == "coco":
        return coco_evaluate(dataset, results)
    return evaluate_by_class(dataset, results, metric, iou_threshold)


def format_metrics(metrics: dict) -> str:
    """The table of :func:`evaluate_results`' metrics, in percent."""
    return format_coco_table(metrics) if metrics["metric"] == "coco" else format_ap_table(metrics)
