"""Running a trained detector over a dataset split and scoring it (``sppnet test``)."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from detection.core.cache import Cache, atomic_write_bytes
from detection.detector import Detector
from detection.evaluation.results import evaluate_results
from detection.core.images import load_image
from detection.core.detections import Detections
from detection.data.devkit import check_image_id, write_devkit_results
from detection.data.records import Dataset
from proposals.store import ProposalStore


def detect_dataset(detector: Detector, dataset: Dataset, cache: Cache, workers: int = 1,
                   progress: bool = True) -> tuple[dict[str, Detections], dict[str, str]]:
    """Detections for every image of the split, and failures (image id -> one-line reason).

    Proposals come from the (shared) proposal cache, computed in parallel first; conv maps are
    cached too when the detector was given the same cache, so re-testing costs only pooling.
    """
    store = ProposalStore(cache, detector.config.proposals, workers=workers)
    proposals, failures = store.compute_all([(r.image_id, r.path) for r in dataset], progress=progress)
    detections = {}
    for record in tqdm(dataset, desc="detect", disable=not progress, leave=False):
        if record.image_id in failures:
            continue
        maps, image_size = detector.extractor.maps(record.image_id, lambda r=record: load_image(r.path))
        detections[record.image_id] = detector.detect_with_maps(maps, proposals[record.image_id], image_size)
    return detections, failures


def test_model(detector: Detector, dataset: Dataset, out_dir: str | Path, cache: Cache, metric: str = "voc07",
               workers: int = 1, progress: bool = True) -> dict:
    """Detect, write devkit result files under ``out_dir/results`` and ``out_dir/metrics.json``; return the metrics.

    The metrics are those of the result files as written (scores and coordinates rounded), so that
    ``sppnet eval`` of them gives the same numbers.
    """
    out_dir = Path(out_dir)
    for record in dataset:  # before any work, not after it
        check_image_id(record.image_id)
    detections, failures = detect_dataset(detector, dataset, cache, workers=workers, progress=progress)
    write_devkit_results(out_dir / "results", dataset.split, dataset.classes, detections)
    metrics = evaluate_results(dataset, out_dir / "results", metric=metric)
    if failures:
        metrics["failed_images"] = failures
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    return metrics


test_model.__test__ = False  # not a pytest test, despite the name
