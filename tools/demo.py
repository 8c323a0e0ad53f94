"""`sppnet demo`: generate the built-in dataset, train, test and print the AP table, all offline on CPU."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tools.common import (
    add_config_arguments,
    add_runtime_arguments,
    config_from_args,
    device_from_args,
    int_at_least,
    save_config,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="sppnet-demo", help="working directory (default: %(default)s)")
    parser.add_argument("--num-images", type=int_at_least(1), default=40,
                        help="images per split (default: %(default)s)")
    parser.add_argument("--seed", type=int_at_least(0), default=0,
                        help="seed of the generated images (default: %(default)s)")
    # the demo preset: a narrower head fine-tuned for fewer iterations, so the demo stays minutes on a CPU
    add_config_arguments(parser, preset="demo")
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from detection.data.demo import DEMO_CLASSES, make_demo_dataset
    from detection.data.voc import VOCDataset
    from detection.evaluation.voc_eval import format_ap_table
    from detection.runs.test import test_model
    from detection.training.trainer import Trainer

    device = device_from_args(args)
    start = time.perf_counter()
    out = Path(args.out)
    voc = make_demo_dataset(out / "data", num_trainval=args.num_images, num_test=args.num_images, seed=args.seed)
    print(f"demo dataset: {voc}")
    train_set = VOCDataset(voc, "trainval", classes=DEMO_CLASSES)  # all five, even if a small split lacks one
    trainer = Trainer(config, out / "train", device=device, workers=args.workers, progress=not args.quiet)
    save_config(config, trainer.work_dir)
    detector = trainer.train(train_set)
    test_set = VOCDataset(voc, "test", classes=detector.classes)
    metrics = test_model(detector, test_set, out / "test", trainer.cache, workers=args.workers,
                         progress=not args.quiet)
    print(format_ap_table(metrics))
    print(f"model: {out / 'train' / 'model.pt'}; results: {out / 'test'}; "
          f"wall time {time.perf_counter() - start:.0f} s")
    return 0
