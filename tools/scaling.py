"""`sppnet scaling`: time, disk and peak memory of each training stage as the image count grows.

Trains from nothing on the first N training images for each N of --sizes (1 and/or 5 scales), one
stage at a time, tests on --test-images test images, fits each stage's CPU time to a + b·N and
extrapolates it to VOC 2007 (5,011 trainval images). Without --data it generates the realistic
set (150 + 150 images) under OUT/data. The table goes into --doc between markers
(docs/benchmarks.md, "Scaling"); --json keeps every measurement.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from tools.common import (
    add_config_arguments,
    add_runtime_arguments,
    command_line,
    config_from_args,
    device_from_args,
    int_at_least,
    parse_int_list,
)

VOC07_TRAINVAL = 5011  # images of VOC 2007 trainval (recipe §10)
DOC_HEADER = "# Benchmarks\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="sppnet-scaling", help="working directory (default: %(default)s)")
    parser.add_argument("--data", default=None,
                        help="a VOC-format directory with trainval and test splits (default: the realistic "
                             "generated set, made under OUT/data)")
    parser.add_argument("--sizes", type=parse_int_list, default=(20, 40, 80, 150),
                        help="training-set sizes, comma-separated (default: 20,40,80,150)")
    parser.add_argument("--five-scale-sizes", type=parse_int_list, default=None, metavar="SIZES",
                        help="sizes of the 5-scale runs (default: --sizes)")
    parser.add_argument("--columns", choices=("1", "5", "1,5"), default="1,5", help="scale sets to run")
    parser.add_argument("--test-images", type=int_at_least(0), default=20,
                        help="test images per run (0: no test stage; default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write every measurement here")
    parser.add_argument("--doc", default=None, help="Markdown file to write the tables into (e.g. docs/benchmarks.md)")
    add_config_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from detection.core.cache import atomic_write_bytes
    from detection.core.config import FIVE_SCALES, SINGLE_SCALE
    from detection.data.realistic import make_realistic_dataset
    from detection.data.voc import VOCDataset
    from detection.runs.ablation import machine_description, write_markdown_section
    from detection.runs.scaling import costs_table, costs_to_json, fit_growth, growth_table, measure_scaling

    device = device_from_args(args)
    out = Path(args.out)
    data = Path(args.data) if args.data else make_realistic_dataset(out / "data")
    train_set, test_set = VOCDataset(data, "trainval"), VOCDataset(data, "test")
    runs = {"1": [(SINGLE_SCALE, args.sizes)], "5": [(FIVE_SCALES, args.five_scale_sizes or args.sizes)]}
    runs["1,5"] = runs["1"] + runs["5"]
    started = datetime.now(timezone.utc)
    costs = []
    for scales, sizes in runs[args.columns]:
        costs += measure_scaling(config, train_set, test_set, out, sizes, [scales], test_images=args.test_images,
                                 device=device, workers=args.workers, progress=not args.quiet)
    growths = fit_growth(costs)
    tables = (f"Measured:\n\n{costs_table(costs)}\n\nCPU time per stage fitted to a + b·N over the sizes, "
              f"extrapolated:\n\n{growth_table(growths, {'VOC07 trainval (5,011)': VOC07_TRAINVAL})}\n")
    print(tables)
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(costs_to_json(costs), indent=2).encode())
    if args.doc:
        section = (f"### `sppnet scaling` on {data} ({started:%Y-%m-%d %H:%M} UTC)\n\n"
                   f"- command: `{command_line('scaling')}`\n- machine: {machine_description(device.type)}\n\n"
                   + tables)
        write_markdown_section(args.doc, f"{data.parent.name}-{data.name}", section, DOC_HEADER, command="scaling")
        print(f"tables written to {args.doc}")
    return 0
