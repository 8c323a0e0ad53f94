"""`sppnet train`: proposals → conv features → fine-tuning → SVMs → box regressors → DIR/model.pt.

Each stage caches its output under DIR/cache with a fingerprint of its inputs: a rerun skips the
stages that are up to date, resumes an interrupted one, and recomputes only what a changed option
affects. --stages runs some stages alone from the others' cached outputs. The resolved config is
written to DIR/config.yaml, which --config reads back.
"""
from __future__ import annotations

import argparse

from detection.core.config import STAGES, parse_stages
from tools.common import (
    add_config_arguments,
    add_cache_dir_argument,
    add_images_argument,
    add_proposals_argument,
    add_runtime_arguments,
    config_from_args,
    load_data,
    device_from_args,
    parse_classes,
    precomputed_from_args,
    save_config,
)


def _stages(text: str) -> tuple[str, ...]:
    try:
        return parse_stages(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="a VOC-format directory (VOC2007 itself or a VOCdevkit), or a COCO annotation .json "
                             "with --images")
    parser.add_argument("--split", default="trainval", help="ImageSets/Main split to train on (default: %(default)s)")
    parser.add_argument("--work-dir", required=True,
                        help="output directory: model.pt, config.yaml, train.log, caches under cache/")
    add_cache_dir_argument(parser, "WORK_DIR/cache")
    parser.add_argument("--stages", type=_stages, default=STAGES,
                        help=f"comma-separated stages to run, in pipeline order (default: {','.join(STAGES)}); "
                             "the others' outputs are read from the cache")
    parser.add_argument("--classes", type=parse_classes, default=None,
                        help="comma-separated class names; objects of other classes are ignored (default: VOC's 20, "
                             "or the names found in the split's annotations)")
    add_images_argument(parser)
    parser.add_argument("--plot", action="store_true",
                        help="also draw fine-tuning's loss and accuracy as DIR/finetune.png (needs matplotlib, "
                             "the `plots` extra); DIR/finetune.csv holds the numbers in any case")
    add_config_arguments(parser)
    add_proposals_argument(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)  # every option checked before anything is imported or read
    from detection.training.trainer import Trainer
    from detection.visualize import check_charts, save_finetune_curves

    if args.plot:
        check_charts()  # before any work: matplotlib is an optional extra

    device = device_from_args(args)
    dataset = load_data(args, classes=args.classes)
    trainer = Trainer(config, args.work_dir, device=device, workers=args.workers, progress=not args.quiet,
                      proposals=precomputed_from_args(args), cache_dir=args.cache_dir)
    save_config(config, trainer.work_dir)
    detector = trainer.train(dataset, stages=args.stages)
    for path in save_finetune_curves(trainer.finetune_history(), trainer.work_dir, plot=args.plot):
        print(f"fine-tuning curves: {path}")
    if detector is not None:
        print(f"trained on {dataset.root} ({dataset.split}): {dataset.summary()} -> {trainer.work_dir / 'model.pt'}")
    return 0
