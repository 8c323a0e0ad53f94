"""`sppnet train`: proposals → conv features → SVMs → box regressors → DIR/model.pt."""
from __future__ import annotations

import argparse

from detection.train import Trainer
from detection.voc import VOCDataset
from tools.common import (
    add_config_arguments,
    add_runtime_arguments,
    config_from_args,
    parse_classes,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a VOC-format directory (VOC2007 itself or a VOCdevkit)")
    parser.add_argument("--split", default="trainval", help="ImageSets/Main split to train on (default: %(default)s)")
    parser.add_argument("--work-dir", required=True, help="output directory: model.pt, caches under cache/")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="comma-separated class names (default: VOC's 20, or the names found in the annotations)")
    add_config_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    dataset = VOCDataset(args.data, args.split, classes=args.classes)
    trainer = Trainer(config_from_args(args), args.work_dir, device=args.device, workers=args.workers,
                      progress=not args.quiet)
    trainer.train(dataset)
    print(f"trained on {len(dataset)} images of {dataset.root} ({args.split}), "
          f"{len(dataset.classes)} classes -> {trainer.work_dir / 'model.pt'}")
    return 0
