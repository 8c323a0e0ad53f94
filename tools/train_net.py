"""`sppnet train`: proposals → conv features → fine-tuning → SVMs → box regressors → DIR/model.pt.

Each stage caches its output under DIR/cache with a fingerprint of its inputs: a rerun skips the
stages that are up to date, resumes an interrupted one, and recomputes only what a changed option
affects. ``--stages`` runs some stages alone from the others' cached outputs.
"""
from __future__ import annotations

import argparse

from detection.training.stages import STAGES, parse_stages
from detection.training.trainer import Trainer
from detection.data.voc import VOCDataset
from detection.visualize import check_charts, save_finetune_curves
from tools.common import (
    add_config_arguments,
    add_runtime_arguments,
    config_from_args,
    parse_classes,
)


def _stages(text: str) -> tuple[str, ...]:
    try:
        return parse_stages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="a VOC-format directory (VOC2007 itself or a VOCdevkit)")
    parser.add_argument("--split", default="trainval", help="ImageSets/Main split to train on (default: %(default)s)")
    parser.add_argument("--work-dir", required=True, help="output directory: model.pt, train.log, caches under cache/")
    parser.add_argument("--stages", type=_stages, default=STAGES,
                        help=f"comma-separated stages to run, in pipeline order (default: {','.join(STAGES)}); "
                             "the others' outputs are read from the cache")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="comma-separated class names (default: VOC's 20, or the names found in the annotations)")
    parser.add_argument("--plot", action="store_true",
                        help="also draw fine-tuning's loss and accuracy as DIR/finetune.png (needs matplotlib, "
                             "the `plots` extra); DIR/finetune.csv holds the numbers in any case")
    add_config_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.plot:
        check_charts()  # before any work: matplotlib is an optional extra
    dataset = VOCDataset(args.data, args.split, classes=args.classes)
    trainer = Trainer(config_from_args(args), args.work_dir, device=args.device, workers=args.workers,
                      progress=not args.quiet)
    detector = trainer.train(dataset, stages=args.stages)
    for path in save_finetune_curves(trainer.finetune_history(), trainer.work_dir, plot=args.plot):
        print(f"fine-tuning curves: {path}")
    if detector is not None:
        print(f"trained on {len(dataset)} images of {dataset.root} ({args.split}), "
              f"{len(dataset.classes)} classes -> {trainer.work_dir / 'model.pt'}")
    return 0
