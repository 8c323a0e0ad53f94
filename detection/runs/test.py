"""Running a trained detector over a dataset split and scoring it (``sppnet test``)."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from detection.core.cache import Cache, atomic_write_bytes
from detection.detector import Detector
from detection.evaluation.calibration import labelled_probabilities, reliability
from detection.evaluation.results import evaluate_results
from detection.core.images import load_image
from detection.core.detections import Detections
from detection.data.devkit import check_image_id, write_devkit_results
from detection.data.records import Dataset, ImageRecord
from features.extractor import SPPFeatureExtractor
from proposals.precomputed import PrecomputedProposals
from proposals.store import ProposalStore, proposal_bytes


def detect_dataset(detector: Detector, dataset: Dataset, cache: Cache, workers: int = 1,
                   progress: bool = True, proposals: PrecomputedProposals | None = None,
                   ) -> tuple[dict[str, Detections], dict[str, str]]:
    """Detections for every image of the split, and failures (image id -> one-line reason).

    Proposals come from the (shared) proposal cache, computed in parallel first (or read from
    ``proposals``); conv maps are cached too when the detector was given the same cache, so
    re-testing costs only pooling. Cached entries are used only when computed from files with the
    same content as these images (``cache.stale`` counts the others, which are recomputed). Fails
    before any work when the cache's disk cannot hold what this run will write.
    """
    sources = {record.image_id: cache.source(record.path) for record in dataset}
    store = ProposalStore(cache, detector.config.proposals, workers=workers, precomputed=proposals)
    check_cache_space(detector, dataset, store, sources)
    proposals, failures = store.compute_all([(r.image_id, r.path) for r in dataset], progress=progress)
    detections = {}
    for record in tqdm(dataset, desc="detect", disable=not progress, leave=False):
        if record.image_id in failures:
            continue
        maps, image_size = record_maps(detector, record, sources[record.image_id])
        detections[record.image_id] = detector.detect_with_maps(maps, proposals[record.image_id], image_size)
    return detections, failures


def record_maps(detector: Detector, record: ImageRecord, source: str | None):
    """The detector's conv maps of a dataset image (through its cache; ``source``: the file's hash) and its size."""
    return detector.extractor.maps(record.image_id, lambda: load_image(record.path), source)


def check_cache_space(detector: Detector, dataset: Dataset, store: ProposalStore,
                      sources: dict[str, str | None]) -> None:
    """Raise :class:`~detection.core.cache.CacheSpaceError` when the proposals and conv maps not cached
    yet for ``dataset`` will not fit on the cache's disk (an upper-bound estimate from the images' sizes)."""
    extractor = detector.extractor
    conv_cached = isinstance(extractor, SPPFeatureExtractor) and extractor.cache is not None
    needed = 0
    for record in dataset:
        source = sources[record.image_id]
        if source is None:
            continue  # unreadable: nothing is cached for it
        if not store.has(record.image_id, source):
            needed += proposal_bytes(detector.config.proposals)
        if conv_cached and not extractor.cached(record.image_id, source):
            needed += extractor.cache_bytes(record.height, record.width)
    store.cache.check_space(needed, f"testing {len(dataset)} images of {dataset.root} ({dataset.split})")


def test_model(detector: Detector, dataset: Dataset, out_dir: str | Path, cache: Cache, metric: str = "voc07",
               workers: int = 1, progress: bool = True, proposals: PrecomputedProposals | None = None) -> dict:
    """Detect, write devkit result files under ``out_dir/results`` and ``out_dir/metrics.json``; return the metrics.

    ``metrics.json`` holds what `sppnet eval` of the result files gives. With a calibrated detector
    the reliability table of the detections' probabilities (:mod:`detection.evaluation.calibration`;
    the result files keep margins only) is written to ``out_dir/calibration.json`` and returned
    as the metrics' ``calibration``.

    The metrics are those of the result files as written (scores and coordinates rounded), so that
    ``sppnet eval`` of them gives the same numbers. ``proposals``: precomputed windows instead of
    selective search's.
    """
    out_dir = Path(out_dir)
    for record in dataset:  # before any work, not after it
        check_image_id(record.image_id)
    detections, failures = detect_dataset(detector, dataset, cache, workers=workers, progress=progress,
                                          proposals=proposals)
    write_devkit_results(out_dir / "results", dataset.split, dataset.classes, detections)
    metrics = evaluate_results(dataset, out_dir / "results", metric=metric)
    if failures:
        metrics["failed_images"] = failures
    atomic_write_bytes(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    if detector.calibration is not None:  # how far `sppnet detect`'s probabilities hold
        calibration = reliability(*labelled_probabilities(dataset, detections))
        atomic_write_bytes(out_dir / "calibration.json", json.dumps(calibration, indent=2).encode())
        metrics = {**metrics, "calibration": calibration}
    return metrics


test_model.__test__ = False  # not a pytest test, despite the name
