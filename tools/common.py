"""Arguments shared by several subcommands, and turning them into an SPPConfig.

Every tools/ module imports only argparse-level things at module level (the config tree, not
torch), so `sppnet --help` and usage errors answer at once; a subcommand's run() imports the
library it needs.

A model option comes, in increasing precedence, from the defaults (or the command's preset,
``PRESETS`` in detection/core/config.py), a ``--config`` YAML file, the model flags, and
``--set KEY=VALUE``. The whole config is checked before any work starts; a bad option is a
one-line error naming the flag, the file or the --set key it came from.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detection.core.config import (
    FIVE_SCALES,
    SINGLE_SCALE,
    TEST_TIME_SECTIONS,
    AmpMode,
    ConfigError,
    SPPConfig,
    option_type,
    read_config_file,
    show,
)

CONFIG_FILE = "config.yaml"  # the resolved config, written into `sppnet train`'s work dir


def parse_scales(text: str) -> tuple[int, ...]:
    """'1' -> the single scale 688, '5' -> the five scales, else a comma list of shorter-side sizes."""
    if text == "1":
        return SINGLE_SCALE
    if text == "5":
        return FIVE_SCALES
    try:
        scales = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1, 5 or a comma list of integers, got {text!r}") from None
    if not scales or min(scales) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return scales


def parse_int_list(text: str) -> tuple[int, ...]:
    """'1,2,3,6' -> (1, 2, 3, 6); the ranges are the config's to check."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def parse_classes(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclass(frozen=True)
class ConfigFlag:
    """A command-line flag setting one config option (``key``, dotted).

    ``type``: how the text is read; None reads it by the option's annotation (a Literal gives the
    flag its choices). ``const``: a switch, setting the option to this value.
    """

    flag: str
    key: str
    help: str
    type: Callable[[str], Any] | None = None
    const: Any = None
    metavar: str | None = None

    @property
    def dest(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")


MODEL_FLAGS = (
    ConfigFlag("--mode", "features.mode",
               "spp: conv once per image (SPP-net); rcnn: conv per warped window (R-CNN baseline)"),
    ConfigFlag("--backbone", "features.backbone", "the conv layers; efficientnet_lite0 has offline ImageNet weights"),
    ConfigFlag("--backbone-weights", "features.backbone_weights",
               "a local state-dict file for the backbone (torchvision key names for alexnet/vgg16); "
               "none: the backbone's own weights", metavar="PATH"),
    ConfigFlag("--scales", "features.scales",
               "1 (688), 5 (480,576,688,864,1200) or a comma list of shorter image sides", type=parse_scales),
    ConfigFlag("--scale-rule", "features.scale_rule",
               "per-window scale: area closest to 224² (paper) or side 208 (official code)"),
    ConfigFlag("--projection", "features.projection",
               "window-to-feature-map rule: the paper's appendix or the official code"),
    ConfigFlag("--pyramid", "features.pyramid_levels", "spatial pyramid levels, comma-separated", type=parse_int_list),
    ConfigFlag("--cache-precision", "features.cache_precision",
               "how the conv cache stores maps: float16, or int8 per channel at half the disk "
               "(values within max|x|/254 of the computed ones)"),
    ConfigFlag("--proposal-mode", "proposals.mode",
               "selective search: rcnn_fast (R-CNN's fast mode: k 50, 100), opencv_fast (OpenCV's: k 150, 300, 450) "
               "or quality (more windows, slower)"),
    ConfigFlag("--proposal-width", "proposals.resize_width",
               "selective search runs on the image resized to this width (0: not resized)"),
    ConfigFlag("--max-proposals", "proposals.max_proposals", "selective-search windows kept per image, at most"),
    ConfigFlag("--min-proposal-size", "proposals.min_size",
               "windows narrower or shorter than this many pixels (at the proposal image size) are dropped"),
    ConfigFlag("--feature-layer", "svm.feature_layer",
               "what the SVMs read: pool5 (SPP vector), fc6/fc7 (head before fine-tuning: ImageNet fc layers for "
               "alexnet/vgg16, random ones otherwise), ftfc6/ftfc7 (fine-tuned)"),
    ConfigFlag("--finetune-iterations", "finetune.iterations", "fine-tuning iterations of 128 windows"),
    ConfigFlag("--schedule", "finetune.schedule",
               "learning-rate schedule compressed to the iterations: official (1e-3, ×0.1 at 1/3 and 2/3) "
               "or paper (1e-4, ×0.1 at 5/6)"),
    ConfigFlag("--finetune-scales", "finetune.scale_sampling",
               "scale of each fine-tuning window: random (official code) or chosen by --scale-rule"),
    ConfigFlag("--finetune-hidden", "finetune.hidden",
               "fc6/fc7 width; unset: a pretrained head's own (4096), else 512 for fresh layers (the paper's 4096)"),
    ConfigFlag("--finetune-checkpoint-every", "finetune.checkpoint_every",
               "iterations between fine-tuning checkpoints, from which an interrupted run resumes"),
    ConfigFlag("--svm-c", "svm.C", "the SVMs' regularisation constant C (liblinear -c; R-CNN's 0.001)"),
    ConfigFlag("--bbox-lambda", "bbox.ridge_lambda",
               "box regression's ridge lambda (R-CNN 1000, official SPP code 4000)"),
    ConfigFlag("--bbox-min-overlap", "bbox.min_overlap",
               "box regression trains on windows of IoU above this with a ground-truth box "
               "(R-CNN 0.6, official SPP code 0.5)"),
    ConfigFlag("--no-bbox-reg", "bbox.enabled", "skip bounding-box regression", const=False),
)


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the conv layers run: auto (CUDA when available, else the CPU), cpu, or cuda "
                             "(an error on a machine without CUDA) (default: %(default)s)")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser)
    parser.add_argument("--workers", type=int_at_least(0), default=min(4, os.cpu_count() or 1),
                        help="processes computing selective search in parallel (default: %(default)s)")
    add_amp_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_proposals_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--proposals", metavar="PATH", default=None,
                        help="precomputed windows instead of selective search: R-CNN's selective_search_data "
                             "voc_2007_*.mat, an .npz of one (N, 4) array per image id, or a directory of "
                             "<image_id>.txt with 0-based 'x1 y1 x2 y2' lines (see proposals/precomputed.py)")


def precomputed_from_args(args: argparse.Namespace):
    """--proposals read (the file checked), or None."""
    if args.proposals is None:
        return None
    from proposals.precomputed import PrecomputedProposals

    return PrecomputedProposals(args.proposals)
def add_amp_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--amp", nargs="?", const="bf16", choices=typing.get_args(AmpMode), default=None,
                        help="conv layers in mixed precision on CUDA: bf16 when given alone, or fp16, with "
                             "channels_last tensors; no effect on a CPU (default: off, or the model's setting; "
                             "the config's features.amp)")


def with_amp(detector, amp: str | None):
    """The detector with --amp applied (a variant sharing its weights), or itself when --amp was not given."""
    return detector if amp is None else detector.replace(features={"amp": amp})


def add_set_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str) -> None:
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help_text)


def add_config_arguments(parser: argparse.ArgumentParser, preset: str | None = None) -> None:
    """--config, --set and the model flags; their defaults are the preset's (or the paper's)."""
    base = SPPConfig() if preset is None else SPPConfig.preset(preset)
    parser.set_defaults(config_preset=preset)
    group = parser.add_argument_group(
        "model", "Defaults follow the paper (detection/core/config.py)"
        + (f", with the {preset} preset" if preset else "")
        + ". Precedence: defaults < --config file < these flags < --set.")
    group.add_argument("--config", metavar="FILE.yaml", default=None,
                       help="options from a YAML file: nested (svm: {C: 0.002}) like the config.yaml that "
                            "`sppnet train` writes into its work dir, or with dotted keys (svm.C: 0.002)")
    add_set_argument(group, "set any option of the config tree by its dotted name, e.g. --set svm.C=0.002 "
                            "test.nms_iou=0.4 finetune.base_lr=1e-4 (the names: a work dir's config.yaml)")
    for option in MODEL_FLAGS:
        value = _lookup(base, option.key)
        if option.const is not None:
            group.add_argument(option.flag, dest=option.dest, action="store_const", const=option.const,
                               default=None, help=option.help)
            continue
        annotation = option_type(option.key)
        choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None
        group.add_argument(option.flag, dest=option.dest, default=None, choices=choices, metavar=option.metavar,
                           type=option.type or _reader(annotation),
                           help=f"{option.help} (default: {_default_text(value)})")


def config_from_args(args: argparse.Namespace) -> SPPConfig:
    """The config a command runs with: preset or defaults < --config FILE < model flags < --set.

    Raises ConfigError naming where the bad option came from: the flag, ``FILE: key`` or ``--set key``.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if args.config:
        for key, value in read_config_file(args.config).items():
            values[key], origins[key] = value, f"{args.config}: {key}"
    for option in MODEL_FLAGS:
        value = getattr(args, option.dest)
        if value is not None:
            values[option.key], origins[option.key] = value, option.flag
    if getattr(args, "amp", None) is not None:
        values["features.amp"], origins["features.amp"] = args.amp, "--amp"
    for key, value in parse_assignments(args.set).items():
        values[key], origins[key] = value, f"--set {key}"
    base = SPPConfig() if args.config_preset is None else SPPConfig.preset(args.config_preset)
    try:
        return base.override(values)
    except ConfigError as err:
        raise err.at(origins.get(err.key, err.key)) from None


def model_overrides(args: argparse.Namespace) -> dict[str, str]:
    """``--set`` of a command that loads a trained model: only test-time options, checked here at once
    (names, types, ranges) and applied to the model's config by ``Detector.load``."""
    overrides = parse_assignments(args.set)
    try:
        SPPConfig().override(overrides, sections=TEST_TIME_SECTIONS)
    except ConfigError as err:
        raise err.at(f"--set {err.key}") from None
    return overrides


def add_test_time_set_argument(parser: argparse.ArgumentParser) -> None:
    sections = ", ".join(s + ".*" for s in TEST_TIME_SECTIONS)
    add_set_argument(parser, f"change the model's test-time options ({sections}) by dotted name, e.g. "
                             "--set test.nms_iou=0.4 test.max_per_image=20; it takes every word up to the next "
                             "option, so give it after the inputs")


def parse_assignments(texts: list[str]) -> dict[str, str]:
    """['svm.C=0.002', ...] -> {'svm.C': '0.002', ...}; ConfigError on an item without '='."""
    values = {}
    for text in texts:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise ConfigError("--set", f"expected KEY=VALUE such as svm.C=0.002, got {text!r}")
        values[key.strip()] = value
    return values


def device_from_args(args: argparse.Namespace):
    """--device resolved (a torch.device): one-line error for cuda on a machine without it."""
    from detection.detector import resolve_device

    return resolve_device(args.device)


def save_config(config: SPPConfig, work_dir: str | Path) -> Path:
    """Write the resolved config into ``work_dir`` as YAML, which --config reads back."""
    from detection.core.cache import atomic_write_bytes

    path = Path(work_dir) / CONFIG_FILE
    header = "# the resolved config of this run (defaults < --config < flags < --set); --config reads it back\n"
    atomic_write_bytes(path, (header + config.to_yaml()).encode())
    return path


def _lookup(config: SPPConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _reader(annotation: Any) -> Callable[[str], Any]:
    """The argparse type of an option's annotation: int, float, or text (names, paths)."""
    return annotation if annotation in (int, float) else str


def _default_text(value: Any) -> str:
    return "none" if value is None else value if isinstance(value, str) else show(value)


SHOWN_WARNINGS = 10  # skipped boxes listed one per line; the rest are counted


def command_line(command: str) -> str:
    """``sppnet COMMAND ...`` as typed, for a report, when it came from the command line (not from Python)."""
    if sys.argv[1:2] != [command]:
        return f"sppnet {command} (called from Python)"
    # the thread count changes the wall times a lot on a busy machine, so it is part of the command
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    return threads + "sppnet " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def add_cache_dir_argument(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--cache-dir", default=None,
                        help=f"proposal/conv cache (default: {default}); share it between runs to skip recomputation")


def add_images_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="the image folder, when --data is a COCO annotation .json (one split; --split is "
                             "then not used)")


def load_data(args: argparse.Namespace, classes: tuple[str, ...] | None = None):
    """The data set of --data/--split/--images; prints its summary line and a warning per skipped box."""
    from detection.data.load import load_dataset

    dataset = load_dataset(args.data, args.split, images=args.images, classes=classes)
    print(f"data: {dataset.root} ({dataset.split}): {dataset.summary()}")
    for line in dataset.skipped_boxes[:SHOWN_WARNINGS]:
        print(f"warning: {line}", file=sys.stderr)
    if len(dataset.skipped_boxes) > SHOWN_WARNINGS:
        print(f"warning: and {len(dataset.skipped_boxes) - SHOWN_WARNINGS} more boxes skipped", file=sys.stderr)
    return dataset
