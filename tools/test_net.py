"""`sppnet test`: detect on a split, write devkit result files and metrics.json, print the AP table."""
from __future__ import annotations

import argparse
from pathlib import Path

from tools.common import (
    add_cache_dir_argument,
    add_images_argument,
    add_proposals_argument,
    add_runtime_arguments,
    add_test_time_set_argument,
    device_from_args,
    load_data,
    model_overrides,
    precomputed_from_args,
    with_amp,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="a VOC-format directory (VOC2007 itself or a VOCdevkit), or a COCO annotation .json "
                             "with --images")
    parser.add_argument("--split", default="test", help="ImageSets/Main split to test on (default: %(default)s)")
    add_images_argument(parser)
    parser.add_argument("--model", required=True, help="model.pt written by `sppnet train`")
    parser.add_argument("--out", required=True, help="output directory: results/, metrics.json (and calibration.json for a calibrated model)")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point AP (default); voc10: area under the PR curve")
    add_cache_dir_argument(parser, "OUT/cache")
    add_test_time_set_argument(parser)
    add_proposals_argument(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    overrides = model_overrides(args)
    from detection.core.cache import Cache
    from detection.detector import Detector
    from detection.evaluation.results import format_metrics
    from detection.runs.test import test_model

    cache = Cache(args.cache_dir or Path(args.out) / "cache")
    detector = with_amp(Detector.load(args.model, device=device_from_args(args), cache=cache, overrides=overrides),
                        args.amp)
    dataset = load_data(args, classes=detector.classes)
    metrics = test_model(detector, dataset, args.out, cache, metric=args.metric, workers=args.workers,
                         progress=not args.quiet, proposals=precomputed_from_args(args))
    print(format_metrics(metrics))
    if "calibration" in metrics:
        from detection.evaluation.calibration import format_reliability

        print("probabilities against outcomes (right = a true positive at IoU 0.5, as the AP counts it):")
        print(format_reliability(metrics["calibration"]))
    if cache.stale:
        print(f"{len(cache.stale)} stale cache entries recomputed (computed from other image files than these)")
    for reason in metrics.get("failed_images", {}).values():
        print(f"failed: {reason}")
    return 1 if metrics.get("failed_images") else 0
