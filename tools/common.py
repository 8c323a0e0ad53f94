"""Arguments shared by several subcommands, and turning them into an SPPConfig."""
from __future__ import annotations

import argparse
import os

from detection.core.config import FIVE_SCALES, FRESH_FC_WIDTH, SINGLE_SCALE, SPPConfig
from detection.detector import FEATURE_LAYERS
from features.backbones import BACKBONES
from proposals.selective_search import PROPOSAL_MODES
from features.finetune import SCALE_SAMPLING, SCHEDULES


def parse_scales(text: str) -> tuple[int, ...]:
    """'1' -> the single scale 688, '5' -> the five scales, else a comma list of shorter-side sizes."""
    if text == "1":
        return SINGLE_SCALE
    if text == "5":
        return FIVE_SCALES
    try:
        scales = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--scales: expected 1, 5 or a comma list of integers, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"--scales: sizes must be positive, got {text!r}")
    return scales


def parse_classes(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where the conv layers run (default: cuda if available)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes computing selective search in parallel (default: %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    d = SPPConfig()
    g = parser.add_argument_group("model (defaults follow the paper; see detection/config.py)")
    g.add_argument("--mode", choices=("spp", "rcnn"), default=d.features.mode,
                   help="spp: conv once per image (SPP-net); rcnn: conv per warped window (R-CNN baseline)")
    g.add_argument("--backbone", choices=BACKBONES, default=d.features.backbone,
                   help="efficientnet_lite0 has offline ImageNet weights (default: %(default)s)")
    g.add_argument("--backbone-weights", metavar="PATH", default=None,
                   help="a local state-dict file for the backbone (torchvision key names for alexnet/vgg16)")
    g.add_argument("--scales", type=parse_scales, default=d.features.scales,
                   help="1 (688), 5 (480,576,688,864,1200) or a comma list of shorter sides (default: 1)")
    g.add_argument("--scale-rule", choices=("paper", "official"), default=d.features.scale_rule,
                   help="per-window scale: area closest to 224² (paper) or side 208 (official code) "
                        "(default: %(default)s)")
    g.add_argument("--projection", choices=("paper", "official"), default=d.features.projection,
                   help="window-to-feature-map rule: paper appendix or official code (default: %(default)s)")
    g.add_argument("--pyramid", type=lambda t: tuple(int(v) for v in t.split(",")), default=d.features.pyramid_levels,
                   help="pyramid levels (default: 1,2,3,6)")
    g.add_argument("--proposal-mode", choices=PROPOSAL_MODES, default=d.proposals.mode,
                   help="selective search: rcnn_fast (R-CNN's fast mode: k 50, 100), opencv_fast (OpenCV's: "
                        "k 150, 300, 450) or quality (default: %(default)s)")
    g.add_argument("--proposal-width", type=int, default=d.proposals.resize_width,
                   help="selective search runs on the image resized to this width (default: %(default)s)")
    g.add_argument("--max-proposals", type=int, default=d.proposals.max_proposals)
    g.add_argument("--min-proposal-size", type=int, default=d.proposals.min_size)
    g.add_argument("--feature-layer", choices=FEATURE_LAYERS, default=d.svm.feature_layer,
                   help="what the SVMs read: pool5 (SPP vector), fc6/fc7 (head before fine-tuning: ImageNet fc "
                        "layers for alexnet/vgg16, random ones otherwise), ftfc6/ftfc7 (fine-tuned) "
                        "(default: %(default)s)")
    g.add_argument("--finetune-iterations", type=int, default=d.finetune.iterations,
                   help="fine-tuning iterations of 128 windows (default: %(default)s)")
    g.add_argument("--schedule", choices=tuple(SCHEDULES), default=d.finetune.schedule,
                   help="learning-rate schedule compressed to the iterations: official (1e-3, ×0.1 at 1/3 and 2/3) "
                        "or paper (1e-4, ×0.1 at 5/6) (default: %(default)s)")
    g.add_argument("--finetune-scales", choices=SCALE_SAMPLING, default=d.finetune.scale_sampling,
                   help="scale of each fine-tuning window: random (official code) or chosen by --scale-rule "
                        "(default: %(default)s)")
    g.add_argument("--finetune-hidden", type=int, default=d.finetune.hidden,
                   help="fc6/fc7 width (default: a pretrained head's own, 4096, else "
                        f"{FRESH_FC_WIDTH}; the paper's is 4096)")
    g.add_argument("--finetune-checkpoint-every", type=int, default=d.finetune.checkpoint_every,
                   help="iterations between fine-tuning checkpoints, from which an interrupted run resumes "
                        "(default: %(default)s)")
    g.add_argument("--svm-c", type=float, default=d.svm.C)
    g.add_argument("--bbox-lambda", type=float, default=d.bbox.ridge_lambda,
                   help="ridge lambda (R-CNN 1000, official SPP code 4000)")
    g.add_argument("--bbox-min-overlap", type=float, default=d.bbox.min_overlap,
                   help="regression training windows: IoU above this (R-CNN 0.6, official SPP code 0.5)")
    g.add_argument("--no-bbox-reg", action="store_true", help="skip bounding-box regression")


def config_from_args(args: argparse.Namespace) -> SPPConfig:
    return SPPConfig().replace(
        proposals={"mode": args.proposal_mode, "resize_width": args.proposal_width,
                   "max_proposals": args.max_proposals, "min_size": args.min_proposal_size},
        features={"mode": args.mode, "backbone": args.backbone, "backbone_weights": args.backbone_weights,
                  "scales": args.scales, "scale_rule": args.scale_rule, "projection": args.projection,
                  "pyramid_levels": args.pyramid},
        finetune={"iterations": args.finetune_iterations, "schedule": args.schedule,
                  "scale_sampling": args.finetune_scales, "hidden": args.finetune_hidden,
                  "checkpoint_every": args.finetune_checkpoint_every},
        svm={"C": args.svm_c, "feature_layer": args.feature_layer},
        bbox={"enabled": not args.no_bbox_reg, "ridge_lambda": args.bbox_lambda,
              "min_overlap": args.bbox_min_overlap},
    )
