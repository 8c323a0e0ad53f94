"""The `sppnet` command: one entry point, one subcommand per job.

Parsing the command line imports no torch (tools/common.py says why), so --help, --version and
usage errors answer at once.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

from detection.core.errors import SppnetError
from tools import (
    ablation,
    benchmark,
    benchmark_svm,
    demo,
    detect_net,
    eval_net,
    export_net,
    filter_net,
    proposal_recall,
    scaling,
    test_net,
    train_net,
)

COMMANDS = {
    "demo": (demo, "generate a small dataset, train, test and print the AP table (offline, CPU)"),
    "train": (train_net, "train an SPP-net detector on a VOC-format split"),
    "test": (test_net, "detect on a VOC-format split and report per-class AP and mAP"),
    "eval": (eval_net, "evaluate devkit result files on a VOC-format split"),
    "detect": (detect_net, "detect objects in image or video files or folders"),
    "filter": (filter_net, "filter a finished `detect` run again (threshold, classes, top-k) without recomputing it"),
    "ablation": (ablation, "the paper's Table 9 (feature layers × 1/5 scales) on a generated set -> docs/results.md"),
    "recall": (proposal_recall, "selective search modes compared: recall at IoU 0.5 / 0.7 and seconds per image"),
    "benchmark": (benchmark, "time SPP-net (1 and 5 scales) against R-CNN on the same images and proposals"),
    "scaling": (scaling, "time, disk and peak memory per training stage as the image count grows, extrapolated to VOC 2007"),
    "benchmark-svm": (benchmark_svm, "time and peak memory of the SVM stage at VOC size, on generated features"),
    "export": (export_net, "write a model's scoring (conv, pyramid pooling, head, SVMs) as ONNX or TorchScript"),
}


def version() -> str:
    try:
        return metadata.version("sppnet")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sppnet", description="SPP-net object detection (He et al., 2014).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("interrupted: finished work is kept in the caches; rerun to continue", file=sys.stderr)
        return 130
    except (SppnetError, OSError) as err:
        if os.environ.get("SPPNET_DEBUG"):
            raise
        print(f"sppnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
