"""`sppnet filter`: filter the detections of a finished `sppnet detect` again, without recomputing them.

Reads RUN/predictions.jsonl one record at a time and writes OUT/predictions.jsonl,
OUT/detections.json (COCO) and OUT/failed.tsv as `sppnet detect` would have with these filters.
Filters only remove detections: a threshold below the one RUN was made with keeps what RUN kept.
Pictures (vis/) are not redrawn.
"""
from __future__ import annotations

import argparse

from tools.detect_net import add_filter_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="RUN", help="the --out directory of a finished `sppnet detect`")
    parser.add_argument("--out", required=True, help="where the filtered run is written (not RUN)")
    add_filter_arguments(parser, "RUN's", "RUN's")


def run(args: argparse.Namespace) -> int:
    from detection.runs.batch import DETECTIONS, PREDICTIONS
    from detection.runs.batch.refilter import refilter

    images, failures = refilter(args.source, args.out, args.score_thresh, args.topk, args.classes, args.min_prob)
    print(f"filter: {images} images, {len(failures)} failed in {args.source}")
    print(f"detections: {args.out}/{DETECTIONS} (COCO), {args.out}/{PREDICTIONS}")
    return 0
