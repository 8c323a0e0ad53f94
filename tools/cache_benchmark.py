"""Conv cache size per image (before/now, per backbone), extrapolated to a data set, and its read speed.

    python -m tools.cache_benchmark --scales 5 --images 10022 --copies 30

10022 = VOC 2007 trainval (5,011 images) and their flips. See detection/runs/cache_benchmark.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from detection.core.config import FIVE_SCALES
from detection.runs.cache_benchmark import format_report, read_speed, size_row, temporary_directory
from features.backbones import BACKBONES, build_backbone
from tools.common import parse_scales


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--width", type=int, default=500, help="image width (default: %(default)s, VOC's usual)")
    parser.add_argument("--height", type=int, default=375, help="image height (default: %(default)s)")
    parser.add_argument("--scales", type=parse_scales, default=FIVE_SCALES,
                        help="5 (480,576,688,864,1200), 1 (688) or a comma list (default: 5)")
    parser.add_argument("--backbones", default="efficientnet_lite0,alexnet,vgg16",
                        help=f"comma list of {', '.join(BACKBONES)} for the size table (default: %(default)s)")
    parser.add_argument("--images", type=int, default=10022,
                        help="images to extrapolate to (default: %(default)s, VOC 2007 trainval with flips)")
    parser.add_argument("--copies", type=int, default=30, help="entries read in the speed test (default: %(default)s)")
    parser.add_argument("--dir", default=None, help="where the test entries are written (default: the temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    with temporary_directory(args.dir) as name:
        directory = Path(name)
        sizes = [size_row(build_backbone(name, pretrained=False), args.height, args.width, args.scales, directory)
                 for name in args.backbones.split(",")]
        image = np.random.default_rng(0).integers(0, 256, (args.height, args.width, 3), dtype=np.uint8)
        reads = read_speed(build_backbone("efficientnet_lite0"), image, args.scales, args.copies, directory,
                           one_scale=len(args.scales) // 2)
    print(format_report(sizes, reads, args.copies, args.images, args.height, args.width, args.scales))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.cache_benchmark", description=__doc__.strip().split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
