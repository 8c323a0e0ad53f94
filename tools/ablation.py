"""`sppnet ablation`: the paper's Table 9 on a generated set (demo or realistic), written into docs/results.md.

Rows pool5, fc6, ftfc6, ftfc7, ftfc7 + bb, ftfc7+pool5 + bb; columns 1 scale and 5 scales. Every cell trains and
tests a detector under OUT/<column>/<row>, all over one cache (OUT/cache), so the shared stages run
once per column. The model options below apply to every cell except --scales, --feature-layer and
--no-bbox-reg, which the rows and columns set.
"""
from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

from tools.common import (
    add_config_arguments,
    add_runtime_arguments,
    command_line,
    config_from_args,
    device_from_args,
    int_at_least,
)

DOC_HEADER = """# Measured results

Produced by `sppnet ablation` (tools/ablation.py); each generated section sits between markers
and is replaced when the same data set is measured again. Text outside the markers is written by hand.
"""


def _image_size(text: str) -> tuple[int, int]:
    """'320x240' -> (320, 240)."""
    try:
        width, height = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH such as 320x240, got {text!r}") from None
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="sppnet-ablation", help="working directory (default: %(default)s)")
    # the names of detection.runs.ablation.GENERATED_SETS (not imported here: no torch for --help)
    parser.add_argument("--dataset", choices=("demo", "realistic", "realistic-small"), default="demo",
                        help="generated set: demo (drawn shapes), realistic (real objects cut from photographs "
                             "pasted onto other photographs, 15 px to half the image; needs scikit-image) or "
                             "realistic-small (the same, objects up to 96 px) (default: %(default)s)")
    parser.add_argument("--num-images", type=int_at_least(1), default=None,
                        help="generated images per split (default: 40 demo, 150 realistic)")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="data seed (default: %(default)s)")
    parser.add_argument("--image-size", type=_image_size, default=None,
                        metavar="WxH", help="generated image size (default: 320x240 demo, 500x375 realistic)")
    parser.add_argument("--five-scale-images", type=int_at_least(1), default=None, metavar="N",
                        help="use only the first N images of each split in the 5-scale column (CPU budget)")
    parser.add_argument("--columns", choices=("1", "5", "1,5"), default="1,5", help="scale columns to run")
    parser.add_argument("--doc", default="docs/results.md", help="Markdown file to write into (default: %(default)s)")
    # the defaults of `sppnet train`: the table measures what a user gets
    add_config_arguments(parser)
    add_runtime_arguments(parser)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from detection.data.voc import VOCDataset
    from detection.runs.ablation import (
        COLUMNS,
        GENERATED_SETS,
        AblationColumn,
        machine_description,
        report,
        run_ablation,
        write_markdown_section,
    )

    device = device_from_args(args)
    generated = GENERATED_SETS[args.dataset]
    width, height = args.image_size or generated.image_size
    count = args.num_images or generated.num_images
    name = f"{args.dataset}-{count}-{width}x{height}-seed{args.seed}"
    # one directory per generated set: image ids repeat across sets, and the caches are keyed by id
    out = Path(args.out) / name
    voc, made_by = generated.generate(out / "data", count, args.seed, (width, height))
    train_set, test_set = (VOCDataset(voc, split, classes=generated.classes) for split in ("trainval", "test"))
    one, five = COLUMNS
    columns = {"1": (one,), "5": (AblationColumn(five.name, five.scales, args.five_scale_images),),
               "1,5": (one, AblationColumn(five.name, five.scales, args.five_scale_images))}[args.columns]
    started = datetime.now(timezone.utc)
    result = run_ablation(config, train_set, test_set, out, columns=columns, device=device, workers=args.workers,
                           progress=not args.quiet)
    section = report(result, title=f"{generated.title}: {count} + {count} generated images "
                                    f"({width}×{height}, seed {args.seed})",
                     dataset=made_by,
                     config=config, machine=machine_description(device.type),
                     command=command_line("ablation"), date=started.strftime("%Y-%m-%d %H:%M UTC"))
    write_markdown_section(args.doc, name, section, DOC_HEADER)
    print(f"tables written to {args.doc}")
    return 0
