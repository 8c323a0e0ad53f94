"""`sppnet recall`: selective search modes compared on a VOC-format split, recall and seconds per image.

For each --modes entry: recall of the non-difficult ground-truth boxes at IoU 0.5 and 0.7 (all
objects, and those under 32 px), boxes per image, and CPU and wall seconds of selective search per
image. The other proposal options (--proposal-width, --max-proposals, --min-proposal-size) apply to
every mode. Writes a Markdown table (docs/benchmarks.md has one) to stdout.
"""
from __future__ import annotations

import argparse

from detection.core.config import ProposalConfig, SPPConfig
from detection.data.voc import VOCDataset
from proposals.recall import compare_modes, recall_table
from proposals.selective_search import PROPOSAL_MODES


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(text.split(","))
    unknown = [m for m in modes if m not in PROPOSAL_MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode(s) {', '.join(unknown)}; expected {', '.join(PROPOSAL_MODES)}")
    return modes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SPPConfig().proposals
    parser.add_argument("--data", required=True, help="a VOC-format directory")
    parser.add_argument("--split", default="test", help="(default: %(default)s)")
    parser.add_argument("--num-images", type=int, default=30, help="first N images of the split (default: %(default)s)")
    parser.add_argument("--modes", type=_modes, default=PROPOSAL_MODES[:2],
                        help=f"comma list of {', '.join(PROPOSAL_MODES)} (default: {','.join(PROPOSAL_MODES[:2])})")
    parser.add_argument("--proposal-width", type=int, default=d.resize_width,
                        help="selective search runs on the image resized to this width (default: %(default)s)")
    parser.add_argument("--max-proposals", type=int, default=d.max_proposals,
                        help="windows kept per image, at most (default: %(default)s)")
    parser.add_argument("--min-proposal-size", type=int, default=d.min_size,
                        help="windows narrower or shorter than this many pixels are dropped (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    dataset = VOCDataset(args.data, args.split)
    images = [(r.path, r.boxes[~r.difficult]) for r in dataset.records[:args.num_images]]
    config = ProposalConfig(resize_width=args.proposal_width, max_proposals=args.max_proposals,
                            min_size=args.min_proposal_size)
    results = compare_modes(images, config, args.modes)
    print(f"{len(images)} images of {dataset.root} ({args.split}), {results[0].num_objects} non-difficult objects, "
          f"proposal width {args.proposal_width}, at most {args.max_proposals} boxes, min size {args.min_proposal_size}")
    print(recall_table(results))
    return 0
