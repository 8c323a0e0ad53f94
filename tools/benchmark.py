"""`sppnet benchmark`: SPP-net (1 and 5 scales) against R-CNN, timed on the same images and proposals.

Prints per-image conv, pooling + fc, SVM + NMS + box-regression and total times, the speedups over
R-CNN and peak memory, as a table shaped like the paper's; --json writes the same as JSON. Without
--model the detector is untrained (random backbone unless --backbone-weights, random SVMs): timing
needs no training. Every mode detects on the same windows: each image's selective-search windows,
cut to at most --max-proposals.
R-CNN on a CPU takes minutes per image at 2000 windows: --rcnn-images runs it on fewer images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from detection.core.config import (
    BACKBONES,
    FIVE_SCALES,
    PASS_FRACTION,
    SINGLE_SCALE,
    TEST_TIME_SECTIONS,
    ConfigError,
    SPPConfig,
)
from tools.common import (
    add_amp_argument,
    add_device_argument,
    add_test_time_set_argument,
    device_from_args,
    int_at_least,
    model_overrides,
    parse_scales,
    with_amp,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a VOC-format directory; images of --split")
    source.add_argument("--images", metavar="DIR", help="a directory of images (searched recursively)")
    parser.add_argument("--split", default="test", help="with --data (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="model.pt written by `sppnet train`; default: an untrained detector of --backbone")
    parser.add_argument("--backbone", choices=BACKBONES, default=SPPConfig().features.backbone,
                        help="untrained detector's backbone (default: %(default)s)")
    parser.add_argument("--backbone-weights", metavar="PATH", default=None,
                        help="untrained detector's backbone weights (default: random initialisation)")
    parser.add_argument("--num-images", type=int_at_least(1), default=5, help="images timed (default: %(default)s)")
    parser.add_argument("--rcnn-images", type=int_at_least(1), default=None,
                        help="of those, how many R-CNN runs on (default: all)")
    parser.add_argument("--max-proposals", type=int_at_least(1), default=2000,
                        help="windows per image, at most: selective search's first; it replaces "
                             "proposals.max_proposals (default: %(default)s)")
    parser.add_argument("--scales", type=parse_scales, default=FIVE_SCALES,
                        help="the multi-scale SPP row: 5 (480,576,688,864,1200) or a comma list (default: 5)")
    parser.add_argument("--single-scale", type=int_at_least(1), default=None,
                        help="the 1-scale SPP row's shorter side (default: the scale of a model trained at one, "
                             f"else {SINGLE_SCALE[0]})")
    parser.add_argument("--rcnn-batch-size", type=int_at_least(1), default=None,
                        help="R-CNN crops per conv batch (default: the model's, 128)")
    parser.add_argument("--pass-fraction", type=float, default=PASS_FRACTION,
                        help="untrained detector: fraction of (window, class) pairs its random SVMs pass into NMS "
                             "(default: %(default)s, as SVMs trained with the recipe do)")
    parser.add_argument("--warmup", type=int_at_least(0), default=1,
                        help="untimed detections per mode first (default: %(default)s)")
    add_device_argument(parser)
    add_amp_argument(parser)
    parser.add_argument("--threads", type=int_at_least(1), default=None,
                        help="CPU threads for torch (default: torch's, one per core); on a CPU shared with other "
                             "jobs, 1 avoids threads waiting on each other")
    parser.add_argument("--seed", type=int, default=0, help="untrained detector's random weights")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    add_test_time_set_argument(parser)


def _image_paths(args: argparse.Namespace) -> list[str]:
    from detection.data.voc import VOCDataset
    from detection.runs.batch import find_images

    if args.data:
        return [str(record.path) for record in VOCDataset(args.data, args.split)]
    return find_images([args.images])


def run(args: argparse.Namespace) -> int:
    import torch

    overrides = model_overrides(args)  # a bad --set fails before any work
    test_keys = [key for key in overrides if key.startswith("test.")]
    if test_keys and not args.model:  # the untrained detector scores pool5 with random SVMs: nothing to change
        raise ConfigError(test_keys[0], "needs --model (a trained detector); without one only proposals.* apply",
                          where=f"--set {test_keys[0]}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _benchmark(args)
    finally:
        torch.set_num_threads(threads)


def _benchmark(args: argparse.Namespace) -> int:
    from detection.core.cache import atomic_write_bytes
    from detection.core.images import load_image
    from detection.detector import Detector
    from detection.data.voc import VOC_CLASSES
    from detection.runs.benchmark import BenchmarkSettings, one_scale_row, run_benchmark
    from detection.runs.benchmark_report import format_report

    device = device_from_args(args)
    overrides = model_overrides(args)
    if args.model:
        detector, random_svms = Detector.load(args.model, device=device, overrides=overrides), False
    else:
        config = SPPConfig().replace(features={"backbone": args.backbone, "backbone_weights": args.backbone_weights})
        config = config.override(overrides, sections=TEST_TIME_SECTIONS)
        detector, random_svms = Detector.untrained(config, VOC_CLASSES, device, seed=args.seed), True
    detector = with_amp(detector, args.amp)
    images = [load_image(path) for path in _image_paths(args)[: args.num_images]]
    single_scale = one_scale_row(detector.config.features.scales) if args.single_scale is None else args.single_scale
    settings = BenchmarkSettings(proposals=args.max_proposals, warmup=args.warmup, single_scale=(single_scale,),
                                 multi_scale=args.scales, rcnn_images=args.rcnn_images,
                                 rcnn_batch_size=args.rcnn_batch_size, pass_fraction=args.pass_fraction)
    report = run_benchmark(detector, images, settings, random_svms=random_svms,
                           log=(lambda _: None) if args.quiet else print, progress=not args.quiet)
    report["model"] = args.model
    print(format_report(report))
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(report, indent=2).encode())
    return 0
