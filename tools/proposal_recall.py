"""`sppnet recall`: selective search settings compared on a data set split, recall and seconds per image.

For each --modes entry and each --min-proposal-size (a comma list compares several): recall of the non-difficult ground-truth boxes at IoU 0.5 and 0.7 (all
objects, and those under 32 px), windows per image, and CPU and wall seconds of selective search
per image. The other proposal options (--proposal-width, --max-proposals) apply to every setting. Prints a Markdown table (docs/benchmarks.md has one).
"""
from __future__ import annotations

import argparse
import typing

from detection.core.config import ProposalConfig, ProposalMode
from tools.common import add_images_argument, int_at_least, load_data, parse_int_list

PROPOSAL_MODES: tuple[str, ...] = typing.get_args(ProposalMode)
COMPARED = ("rcnn_fast", "opencv_fast")


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(text.split(","))
    unknown = [m for m in modes if m not in PROPOSAL_MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {', '.join(unknown)}; expected {', '.join(PROPOSAL_MODES)}")
    return modes


def _sizes(text: str) -> tuple[int, ...]:
    sizes = parse_int_list(text)
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1, got {text!r}")
    return sizes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ProposalConfig()
    parser.add_argument("--data", required=True, help="a VOC-format directory (or a COCO .json with --images)")
    parser.add_argument("--split", default="test", help="(default: %(default)s)")
    add_images_argument(parser)
    parser.add_argument("--num-images", type=int_at_least(1), default=30,
                        help="the first N images of the split (default: %(default)s)")
    parser.add_argument("--modes", type=_modes, default=COMPARED,
                        help=f"comma list of {', '.join(PROPOSAL_MODES)} (default: {','.join(COMPARED)})")
    parser.add_argument("--proposal-width", type=int_at_least(0), default=d.resize_width,
                        help="selective search runs on the image resized to this width (default: %(default)s)")
    parser.add_argument("--max-proposals", type=int_at_least(1), default=d.max_proposals,
                        help="windows kept per image, at most (default: %(default)s)")
    parser.add_argument("--min-proposal-size", type=_sizes, default=(d.min_size,),
                        help="windows narrower or shorter than this are dropped; a comma list compares "
                             f"several (default: {d.min_size})")


def run(args: argparse.Namespace) -> int:
    from proposals.recall import compare_modes, recall_table

    dataset = load_data(args)
    images = [(r.path, r.boxes[~r.difficult]) for r in dataset.records[:args.num_images]]
    config = ProposalConfig(resize_width=args.proposal_width, max_proposals=args.max_proposals)
    results = compare_modes(images, config, args.modes, args.min_proposal_size)
    print(f"{len(images)} images of {dataset.root} ({dataset.split}), {results[0].num_objects} non-difficult "
          f"objects; proposal width {args.proposal_width}, at most {args.max_proposals} windows, "
          f"min size {','.join(map(str, args.min_proposal_size))}")
    print(recall_table(results))
    return 0
