"""`sppnet eval`: evaluate detections (ours or another detector's) on a VOC-format split or a COCO file.

--results is a directory of devkit files (comp4_det_<split>_<class>.txt, as `sppnet test` writes)
or a COCO detections file (OUT/detections.json of `sppnet detect`, images matched to the split by
file name; images outside the split are left out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tools.common import add_images_argument, load_data, parse_classes

EPILOG = """\
metrics:
  voc07  11-point interpolated AP at IoU 0.5 (the VOC 2007 devkit; the paper's numbers)
  voc10  area under the interpolated precision-recall curve at IoU 0.5 (VOC 2010 and later)
  coco   pycocotools: AP over IoU .50:.95, AP50, AP75, AP for small/medium/large boxes. A COCO
         annotation file is its own ground truth. VOC ground truth is converted in memory;
         difficult boxes become iscrowd=1, so detections on them are ignored rather than
         counted as false positives, as in the VOC devkit (pycocotools measures overlap with
         them as intersection over the detection's area).

--by-size adds the AP at IoU 0.5 (voc07 or voc10) of small, medium and large objects by box area,
with COCO's thresholds (up to 32², 32² to 96², from 96² pixels): objects of other sizes are ignored
as difficult ones are, and detections of other sizes that find nothing are not counted as false
positives; a class without objects of a size has no AP there ("–") and stays out of that size's
mAP. Matching stays the devkit's, so the numbers can differ a little from COCOeval's own
(detection/evaluation/voc_eval.py says where).

--plot DIR writes pr_<class>.png per class, pr_all.png and pr_curves.csv (PNG needs matplotlib, the
`plots` extra): precision against recall at IoU 0.5
with VOC matching (for --metric coco too), the interpolated curve bold, the raw one faint.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--data", required=True,
                        help="a VOC-format directory (VOC2007 itself or a VOCdevkit), or a COCO annotation .json "
                             "with --images")
    parser.add_argument("--split", default="test", help="ImageSets/Main split to evaluate on (default: %(default)s)")
    add_images_argument(parser)
    parser.add_argument("--results", required=True,
                        help="directory of comp4_det_<split>_<class>.txt files, or a COCO detections .json")
    parser.add_argument("--metric", choices=("voc07", "voc10", "coco"), default="voc07",
                        help="voc07, voc10 or coco: see below (default: %(default)s)")
    parser.add_argument("--classes", type=parse_classes, default=None, help="comma-separated class names")
    parser.add_argument("--by-size", action="store_true",
                        help="also AP per object size (small, medium, large): see below; voc07 and voc10 only")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the metrics as JSON here")
    parser.add_argument("--plot", metavar="DIR", default=None, help="write precision-recall curves here: PNG (matplotlib) and CSV")


def run(args: argparse.Namespace) -> int:
    if args.by_size and args.metric == "coco":
        from detection.core.config import ConfigError

        raise ConfigError("--by-size", "is for voc07 and voc10; --metric coco reports AP_small, AP_medium and "
                                       "AP_large itself")
    if args.plot:
        from detection.visualize import check_charts

        check_charts()  # before any work: matplotlib is an optional extra
    from detection.core.cache import atomic_write_bytes
    from detection.evaluation.results import evaluate_results, format_metrics, read_results
    from detection.evaluation.voc_eval import class_curves, evaluate_by_size, format_size_table

    dataset = load_data(args, classes=args.classes)
    results = read_results(args.results, dataset)
    metrics = evaluate_results(dataset, results, metric=args.metric)
    print(format_metrics(metrics))
    if args.by_size:
        metrics["by_size"] = evaluate_by_size(dataset, results, metric=args.metric)
        print(format_size_table(metrics["by_size"]))
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(metrics, indent=2).encode())
    if args.plot:
        from detection.visualize import save_pr_curves

        curve_metric = "voc07" if args.metric == "coco" else args.metric
        paths = save_pr_curves(class_curves(dataset, results, curve_metric), args.plot, curve_metric)
        print(f"precision-recall curves: {len(paths) - 1} PNG files and {paths[-1].name} in {args.plot}")
    return 0
