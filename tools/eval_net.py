"""`sppnet eval`: evaluate devkit result files (ours or another detector's) on a VOC split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detection.cache import atomic_write_bytes
from detection.evaluation import evaluate_detections, format_ap_table
from detection.results import read_devkit_results
from detection.voc import VOCDataset
from tools.common import parse_classes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a VOC-format directory (VOC2007 itself or a VOCdevkit)")
    parser.add_argument("--split", default="test", help="(default: %(default)s)")
    parser.add_argument("--results", required=True, help="directory of comp4_det_<split>_<class>.txt files")
    parser.add_argument("--metric", choices=("voc07", "voc10"), default="voc07")
    parser.add_argument("--classes", type=parse_classes, default=None, help="comma-separated class names")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the metrics as JSON here")


def run(args: argparse.Namespace) -> int:
    dataset = VOCDataset(args.data, args.split, classes=args.classes)
    detections = read_devkit_results(args.results, args.split, dataset.classes)
    metrics = evaluate_detections(dataset, detections, metric=args.metric)
    print(format_ap_table(metrics))
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(metrics, indent=2).encode())
    return 0
