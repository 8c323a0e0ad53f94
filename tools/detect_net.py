"""`sppnet detect`: detections for image and video files, folders, globs and lists of paths.

Images are read and proposed by --workers processes ahead of the conv layers; each result is
streamed to OUT/predictions.jsonl as it finishes, and OUT/detections.json (COCO format) is
rebuilt at the end. Rerunning with the same --out skips the images already done.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from detection.core.config import DEFAULT_MAX_PIXELS, MIN_SIDE_STRIDES, SPPConfig
from tools.common import (
    add_proposals_argument,
    add_runtime_arguments,
    add_test_time_set_argument,
    finite_float,
    int_at_least,
    model_overrides,
    parse_classes,
)

if TYPE_CHECKING:  # the library is imported when the command runs, not for --help
    from detection.runs.batch import BatchSummary, OutputDir
    from detection.runs.batch.folder import Merged

EPILOG = """\
inputs:
  Directories are searched recursively for .jpg .jpeg .png .bmp .tif .tiff .webp (any case)
  and the videos .mp4 .avi .mov .mkv .webm .m4v .mpg .mpeg .wmv .flv; quoted glob patterns
  ("photos/**/*.jpg") are expanded the same way; files named directly or in --list (one path
  per line, # comments) are taken whatever their extension (a video by its extension).
  Of a video, every --video-stride-th frame (0, k, 2k, ...) is an image of its own: its
  record has "frame" (0-based index) and "time" (seconds), its name in detections.json and
  failed.tsv is video.mp4#frame=000120, its picture vis/<video path>.frames/000120.jpg.

outputs under --out:
  predictions.jsonl  one line per image, written as it finishes:
                     {"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2],
                     "score", "label"}]}, boxes in 0-based inclusive pixels
  detections.json    COCO format (pycocotools COCO() loads it; its "annotations" are in
                     loadRes format): bbox [x, y, w, h] with x = x1, y = y1, w = x2 - x1 + 1,
                     h = y2 - y1 + 1; category_id = class index + 1; image ids 1..N by file name
  failed.tsv         path<TAB>reason of each image that could not be used
  vis/               with --save-vis: the images with their detections drawn, laid out as
                     below the deepest directory holding all inputs; each is written before
                     its line in predictions.jsonl: a kill or a full disk cannot leave a
                     done image without its picture
  run.json           the model's hash and the filters: a rerun into the same --out with
                     another model or other filters is refused rather than mixed in
  .lock              held while a run writes: a second run into the same --out (or of the
                     same --shard) stops at once with a one-line error naming the first's pid
  Scores are SVM margins (0 = the decision boundary); the model keeps those above its own
  threshold (config test.score_threshold, -1.5 by default); --score-thresh raises it. A model
  trained with calibration also gives each detection a probability in [0, 1] ("probability" in
  predictions.jsonl, the COCO "score"; the margin is then the COCO "margin"), and only those of
  probability >= --min-prob (default 0.5, config test.detect_min_probability) are kept; the
  pictures show the probability. A model without calibration gives margins only.

skipped and failed images:
  An image that cannot be used (missing, empty, corrupt, truncated, not an image, a shorter
  side below --min-side, more pixels than --max-pixels) is reported on one line and the batch
  goes on. The summary counts images done, skipped (done by an earlier run into the same
  --out) and failed; a rerun tries the failed ones again.

speed:
  --workers N processes read the images and run selective search ahead of the conv layers
  (two images per worker in flight at most); the summary gives images/s and the share of
  the time the main process waited on them: while it is high, more workers help.
  --workers 0 does everything in the main process. On a CPU the conv layers get the cores
  the workers leave (at least one) unless OMP_NUM_THREADS is set.

scale-out:
  --shard i/n takes every n-th image of the sorted input list from the i-th on; the shard that
  finishes last merges all shards' outputs. Under torchrun (`torchrun --nproc-per-node N -m
  tools.cli detect ...`) the rank and world size come from RANK/WORLD_SIZE, each rank writes
  OUT/parts/, and rank 0 merges after a barrier (gloo). --workers counts per process.

exit status:
  0 when every image succeeded, 1 when any failed (listed in OUT/failed.tsv), 2 on a usage,
  model or output-directory error.
"""


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n such as 0/4, got {text!r}") from None
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"need 0 <= i < n, got {text!r}")
    return index, count


def add_filter_arguments(parser: argparse.ArgumentParser, default_threshold: str, default_probability: str) -> None:
    """--score-thresh, --min-prob, --topk, --classes (also `sppnet filter`'s)."""
    parser.add_argument("--score-thresh", type=finite_float, default=None, metavar="S",
                        help=f"keep detections scoring at least S (default: {default_threshold})")
    parser.add_argument("--min-prob", type=finite_float, default=None, metavar="P",
                        help=f"keep detections of calibrated probability at least P (default: {default_probability})")
    parser.add_argument("--topk", type=int_at_least(1), default=None, metavar="K",
                        help="keep the K best detections per image")
    parser.add_argument("--classes", type=parse_classes, default=None, metavar="A,B",
                        help="keep only these classes (comma-separated names)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image or video files, directories or glob patterns")
    parser.add_argument("--list", metavar="FILE", help="a text file of image paths, one per line")
    parser.add_argument("--model", required=True, help="model.pt written by `sppnet train`")
    parser.add_argument("--out", required=True, help="output directory (see below)")
    add_filter_arguments(parser, "the model's threshold",
                         f"{SPPConfig().test.detect_min_probability} for a calibrated model; 0 keeps all")
    parser.add_argument("--save-vis", action="store_true", help="also write OUT/vis/: images with boxes drawn")
    parser.add_argument("--max-pixels", type=int_at_least(1), default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels than this (default: %(default)s)")
    parser.add_argument("--min-side", type=int_at_least(1), default=None,
                        help=f"refuse images whose shorter side is below this (default: {MIN_SIDE_STRIDES} x the "
                             "backbone's stride, 32 px for the bundled backbones)")
    parser.add_argument("--video-stride", type=int, default=1, metavar="K",
                        help="of a video, detect in every K-th frame (default: %(default)s, every frame)")
    parser.add_argument("--shard", type=parse_shard, default=None, metavar="i/n",
                        help="process shard i of n (0-based) of the sorted inputs")
    add_test_time_set_argument(parser)
    add_proposals_argument(parser)
    add_runtime_arguments(parser)


def _print_summary(label: str, done: int, skipped: int, failed: int) -> None:
    print(f"{label}: {done} done, {skipped} skipped (done by an earlier run), {failed} failed")


def _print_speed(summary: BatchSummary) -> None:
    print(f"{summary.done} images in {summary.seconds:.1f} s: {summary.images_per_second:.2f} images/s, "
          f"{summary.wait_share:.0%} of the time waiting on proposals")


def run(args: argparse.Namespace) -> int:
    overrides = model_overrides(args)
    from detection.runs.batch.folder import FolderDetection

    with FolderDetection(args.model, args.inputs, args.out, list_file=args.list, score_thresh=args.score_thresh,
                         topk=args.topk, classes=args.classes, save_vis=args.save_vis, max_pixels=args.max_pixels,
                         min_side=args.min_side, shard=args.shard, device=args.device, workers=args.workers,
                         video_stride=args.video_stride, progress=not args.quiet, overrides=overrides,
                         proposals=args.proposals, min_prob=args.min_prob, amp=args.amp) as job:
        summary = job.detect()
        _print_summary(job.label, summary.done, summary.skipped, len(summary.failed))
        if summary.done:
            _print_speed(summary)
        merged = job.finish(summary)
    if merged is not None:
        if merged.done is not None:
            _print_summary("all ranks", merged.done, merged.skipped, merged.failed)
        elif job.count > 1:
            print(f"all {job.count} shards are done: merged")
        _print_outputs(job.out, merged)
    return job.exit_status(summary, merged)


def _print_outputs(out: OutputDir, merged: Merged) -> None:
    from detection.runs.batch import DETECTIONS, FAILED, PREDICTIONS

    print(f"detections: {out.root / DETECTIONS} (COCO), {out.root / PREDICTIONS}")
    if merged.failures:
        print(f"failed images and reasons: {out.root / FAILED}")
