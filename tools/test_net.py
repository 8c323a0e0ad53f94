"""`sppnet test`: detect on a split, write devkit result files and metrics.json, print the AP table."""
from __future__ import annotations

import argparse
from pathlib import Path

from detection.core.cache import Cache
from detection.detector import Detector
from detection.evaluation.voc_eval import format_ap_table
from detection.runs.test import test_model
from detection.data.voc import VOCDataset
from tools.common import add_runtime_arguments, with_amp


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a VOC-format directory (VOC2007 itself or a VOCdevkit)")
    parser.add_argument("--split", default="test", help="(default: %(default)s)")
    parser.add_argument("--model", required=True, help="model.pt written by `sppnet train`")
    parser.add_argument("--out", required=True, help="output directory: results/, metrics.json")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07",
                        help="voc07: 11-point AP (default); voc10: area under the PR curve")
    parser.add_argument("--cache-dir", default=None,
                        help="proposal/conv cache (default: OUT/cache); share it between runs to skip recomputation")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cache = Cache(args.cache_dir or Path(args.out) / "cache")
    detector = with_amp(Detector.load(args.model, device=args.device, cache=cache), args.amp)
    dataset = VOCDataset(args.data, args.split, classes=detector.classes)
    metrics = test_model(detector, dataset, args.out, cache, metric=args.metric, workers=args.workers,
                         progress=not args.quiet)
    print(format_ap_table(metrics))
    for reason in metrics.get("failed_images", {}).values():
        print(f"failed: {reason}")
    return 1 if metrics.get("failed_images") else 0
