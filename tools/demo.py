"""`sppnet demo`: generate the built-in dataset, train, test and print the AP table, all offline on CPU."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from detection.data.demo import DEMO_CLASSES, make_demo_dataset
from detection.evaluation.voc_eval import format_ap_table
from detection.runs.test import test_model
from detection.training.trainer import Trainer
from detection.data.voc import VOCDataset
from tools.common import add_config_arguments, add_runtime_arguments, config_from_args

DEMO_FC_WIDTH = 512
DEMO_ITERATIONS = 500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="sppnet-demo", help="working directory (default: %(default)s)")
    parser.add_argument("--num-images", type=int, default=40, help="images per split (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    add_config_arguments(parser)
    add_runtime_arguments(parser)
    # a narrower head fine-tuned for fewer iterations than the paper's, so the demo stays minutes on a CPU
    parser.set_defaults(finetune_hidden=DEMO_FC_WIDTH, finetune_iterations=DEMO_ITERATIONS)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    out = Path(args.out)
    voc = make_demo_dataset(out / "data", num_trainval=args.num_images, num_test=args.num_images, seed=args.seed)
    print(f"demo dataset: {voc}")
    train_set = VOCDataset(voc, "trainval", classes=DEMO_CLASSES)  # all five, even if a small split lacks one
    trainer = Trainer(config_from_args(args), out / "train", device=args.device, workers=args.workers,
                      progress=not args.quiet)
    detector = trainer.train(train_set)
    test_set = VOCDataset(voc, "test", classes=detector.classes)
    metrics = test_model(detector, test_set, out / "test", trainer.cache, workers=args.workers,
                         progress=not args.quiet)
    print(format_ap_table(metrics))
    print(f"model: {out / 'train' / 'model.pt'}; results: {out / 'test'}; "
          f"wall time {time.perf_counter() - start:.0f} s")
    return 0
