"""The ablation of the paper's Table 9: feature layers × number of scales, mAP and wall time per stage.

Rows: ``pool5`` (no fine-tuning), ``fc6`` (the head before fine-tuning), ``ftfc6``, ``ftfc7``,
``ftfc7 + bb`` (box regression) and ``ftfc7+pool5 + bb`` (both layers side by side, not in the
paper); columns: 1 scale (688) and 5 scales. Every cell is one
:class:`~detection.training.trainer.Trainer` run in its own directory over one shared cache, so proposals,
conv maps and the fine-tuned head are computed once per column and each row only adds what it
changes (its SVMs, box regression, testing). :func:`write_markdown_section` puts the tables into a
Markdown file between markers, leaving the rest of the file (the discussion) untouched.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from detection.core.cache import Cache, atomic_write_bytes
from detection.core.config import FIVE_SCALES, FRESH_FC_WIDTH, SINGLE_SCALE, SPPConfig
from detection.core.detections import by_class
from detection.evaluation.voc_eval import SIZE_RANGES, evaluate_by_class, evaluate_by_size, size_ranges_text
from detection.data.demo import DEMO_CLASSES, make_demo_dataset
from detection.data.realistic import REALISTIC_CLASSES, SMALL_OBJECTS_MAX_EXTENT, make_realistic_dataset
from detection.runs.test import detect_dataset, record_maps
from detection.training.trainer import Trainer
from detection.data.voc import VOCDataset
from proposals.store import ProposalStore


@dataclass(frozen=True)
class AblationRow:
    name: str
    feature_layer: str
    bbox: bool


ROWS = (
    AblationRow("pool5", "pool5", False),
    AblationRow("fc6", "fc6", False),
    AblationRow("ftfc6", "ftfc6", False),
    AblationRow("ftfc7", "ftfc7", False),
    AblationRow("ftfc7 + bb", "ftfc7", True),
    AblationRow("ftfc7+pool5 + bb", "ftfc7+pool5", True),
)


@dataclass(frozen=True)
class AblationColumn:
    """``max_images``: use only the first this many images of each split (None: all)."""

    name: str
    scales: tuple[int, ...]
    max_images: int | None = None


COLUMNS = (AblationColumn("1-scale", SINGLE_SCALE), AblationColumn("5-scale", FIVE_SCALES))

@dataclass(frozen=True)
class GeneratedSet:
    """A data set the ablation can generate: ``make(root, num_trainval, num_test, seed, image_size, **options)`` -> VOC dir.

    ``classes`` fixes the label indices of both splits, even when a small split lacks a class.
    """

    title: str
    make: Callable[..., Path]
    classes: tuple[str, ...]
    image_size: tuple[int, int]  # (width, height)
    num_images: int  # per split
    options: tuple[tuple[str, object], ...] = ()  # more keyword arguments of ``make``, as (name, value) pairs

    def generate(self, root: Path, count: int, seed: int, image_size: tuple[int, int]) -> tuple[Path, str]:
        """Write (or reuse) ``count`` + ``count`` images under ``root``: the VOC dir and the call that made it."""
        width, height = image_size
        voc = self.make(root, num_trainval=count, num_test=count, seed=seed, image_size=image_size, **dict(self.options))
        options = "".join(f", {key}={value!r}" for key, value in self.options)
        return voc, (f"`{self.make.__name__}(num_trainval={count}, num_test={count}, seed={seed}, "
                     f"image_size=({width}, {height}){options})`")


GENERATED_SETS = {
    "demo": GeneratedSet("Demo set", make_demo_dataset, DEMO_CLASSES, (320, 240), 40),
    # issue 8's measurement size: 150 trainval + 150 test images of VOC's size
    "realistic": GeneratedSet("Realistic set", make_realistic_dataset, REALISTIC_CLASSES, (500, 375), 150),
    # the same with objects of at most 96 px, like the report's "small real objects"
    "realistic-small": GeneratedSet("Realistic set, small objects", make_realistic_dataset, REALISTIC_CLASSES,
                                    (500, 375), 150, (("max_extent", SMALL_OBJECTS_MAX_EXTENT),)),
}

# VOC's IoU 0.5 barely notices box regression on the demo's tight boxes; a stricter match shows it
STRICT_IOU = 0.7


@dataclass
class CellResult:
    row: str
    column: str
    feature_layer: str
    metrics: dict  # VOC07 AP per class and mAP at IoU 0.5
    strict_map: float  # mAP at IoU STRICT_IOU
    train_s: dict[str, float]  # stages this cell computed (shared ones only in the first cell needing them)
    test_s: float  # detection (pooling, fc, SVMs, NMS, regression) and evaluation; maps were cached
    finetune_history: list[dict] = field(default_factory=list)
    by_size: dict = field(default_factory=dict)  # evaluate_by_size's "sizes": mAP, objects, AP per size


@dataclass
class ColumnResult:
    column: AblationColumn
    train_images: int
    test_images: int
    test_conv_s: float  # the test images' conv maps, computed once per column before testing
    cells: list[CellResult]


@dataclass
class AblationResult:
    proposals_s: dict[str, float]  # selective search per split ("trainval", "test"), shared by the columns
    columns: list[ColumnResult]


def run_ablation(config: SPPConfig, train_set: VOCDataset, test_set: VOCDataset, out_dir: str | Path,
                 columns: tuple[AblationColumn, ...] = COLUMNS, rows: tuple[AblationRow, ...] = ROWS,
                 device: str | None = None, workers: int = 1, progress: bool = True,
                 log: Callable[[str], None] = print) -> AblationResult:
    """Train and test every (row, column) cell under ``out_dir`` with one shared cache.

    ``config`` gives everything but the cells' scales, feature layer and box regression. Proposals
    do not depend on the scales, so they are computed (and timed) once, before the columns.
    """
    out_dir = Path(out_dir)
    cache = Cache(out_dir / "cache")
    store = ProposalStore(cache, config.proposals, workers=workers)
    proposals_s = {}
    for dataset in (train_set, test_set):
        start = time.perf_counter()
        store.compute_all([(r.image_id, r.path) for r in dataset], progress=progress)
        proposals_s[dataset.split] = time.perf_counter() - start
    results = []
    for column in columns:
        train, test = train_set.first(column.max_images), test_set.first(column.max_images)
        cells, test_conv_s = [], None
        for row in rows:
            log(f"ablation: {row.name}, {column.name}")
            cell_config = config.replace(features={"scales": column.scales}, svm={"feature_layer": row.feature_layer},
                                         bbox={"enabled": row.bbox})
            cell_dir = out_dir / column.name / row.name.replace(" + ", "-")
            trainer = Trainer(cell_config, cell_dir, device=device, workers=workers, progress=progress, log=log,
                              cache_dir=out_dir / "cache")
            detector = trainer.train(train)
            if test_conv_s is None:
                test_conv_s = _fill_test_maps(detector, test, cache)
            start = time.perf_counter()
            detections, _ = detect_dataset(detector, test, cache, workers=workers, progress=progress)
            per_class = by_class(detections, len(test.classes))  # grouped once for the three evaluations
            metrics = evaluate_by_class(test, per_class)
            test_s = time.perf_counter() - start
            strict = evaluate_by_class(test, per_class, iou_threshold=STRICT_IOU)["mAP"]
            log(f"ablation: {row.name}, {column.name}: mAP {100 * metrics['mAP']:.1f} "
                f"({100 * strict:.1f} at IoU {STRICT_IOU})")
            history = trainer.finetune_history() if row.feature_layer.startswith("ft") else []
            by_size = evaluate_by_size(test, per_class)["sizes"]
            cells.append(CellResult(row.name, column.name, row.feature_layer, metrics, strict, dict(trainer.timings),
                                    test_s, history, by_size))
        results.append(ColumnResult(column, len(train), len(test), test_conv_s, cells))
    return AblationResult(proposals_s, results)


def _fill_test_maps(detector, test_set: VOCDataset, cache: Cache) -> float:
    """Compute the test images' conv maps into the detector's cache, so that testing times only detection."""
    start = time.perf_counter()
    for record in test_set:
        record_maps(detector, record, cache.source(record.path))
    return time.perf_counter() - start


# -- the report ------------------------------------------------------------------------------------

def machine_description(device: str) -> str:
    """CPU model, cores and torch threads (and the GPU when one ran the conv layers)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    text = f"{cpu}, {os.cpu_count()} cores visible, {threads} torch thread{'s' if threads != 1 else ''}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def _cell(results: list[ColumnResult], row: str, column: str) -> CellResult | None:
    for result in results:
        for cell in result.cells:
            if cell.row == row and cell.column == column:
                return cell
    return None


def map_table(results: list[ColumnResult], strict: bool = False) -> str:
    """Table 9's shape: one row per feature choice, one mAP column per number of scales
    (at IoU 0.5, or at ``STRICT_IOU`` when ``strict``)."""
    names = [r.column.name for r in results]
    rows = list(dict.fromkeys(cell.row for r in results for cell in r.cells))
    lines = ["| features | " + " | ".join(f"{n} mAP (%)" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for row in rows:
        values = [_cell(results, row, n) for n in names]
        lines.append(f"| {row} | " + " | ".join(
            "–" if c is None else f"{100 * (c.strict_map if strict else c.metrics['mAP']):.1f}" for c in values) + " |")
    return "\n".join(lines)


def size_table(results: list[ColumnResult]) -> str:
    """mAP at IoU 0.5 of small, medium and large objects (:func:`~detection.evaluation.voc_eval.evaluate_by_size`)
    per row, a group of columns per number of scales; the header counts each size's objects."""
    sizes = [size for size in SIZE_RANGES if size != "all"]
    rows = list(dict.fromkeys(cell.row for r in results for cell in r.cells))
    header = [f"{r.column.name} {size} ({r.cells[0].by_size[size]['objects']})" for r in results for size in sizes]
    lines = ["| features | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for row in rows:
        values = []
        for result in results:
            cell = _cell([result], row, result.column.name)
            values += ["–" if cell is None or cell.by_size[size]["mAP"] is None
                       else f"{100 * cell.by_size[size]['mAP']:.1f}" for size in sizes]
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def ap_table(results: list[ColumnResult]) -> str:
    """Per-class AP of every cell."""
    classes = list(results[0].cells[0].metrics["ap"])
    lines = ["| cell | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
    for result in results:
        for cell in result.cells:
            lines.append(f"| {cell.row}, {cell.column} | "
                         + " | ".join(f"{100 * cell.metrics['ap'][c]:.1f}" for c in classes) + " |")
    return "\n".join(lines)


def timing_table(results: list[ColumnResult]) -> str:
    """Wall time (s) per stage and column: stages shared by the rows once, learned ones per row.

    A stage no cell of the column computed (its output was already cached) reads "cached".
    """
    names = [r.column.name for r in results]
    stage_rows: dict[str, list[str]] = {}

    def put(label: str, index: int, seconds: float | None) -> None:
        stage_rows.setdefault(label, ["–"] * len(names))[index] = "cached" if seconds is None else f"{seconds:.0f}"

    for i, result in enumerate(results):
        def computed(stage: str, cells: list[CellResult] = result.cells) -> float | None:
            times = [c.train_s[stage] for c in cells if stage in c.train_s]
            return sum(times) if times else None

        put("conv maps, trainval images (+ flips)", i, computed("conv"))
        put("fine-tuning", i, computed("finetune"))
        for layer in dict.fromkeys(c.feature_layer for c in result.cells):
            put(f"SVMs on {layer}", i, computed("svm", [c for c in result.cells if c.feature_layer == layer]))
        put("box regression", i, computed("bbox"))
        put("conv maps, test images", i, result.test_conv_s)
        for cell in result.cells:
            put(f"test {cell.row} (detect + evaluate)", i, cell.test_s)
    lines = ["| stage | " + " | ".join(f"{n} (s)" for n in names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {label} | " + " | ".join(values) + " |" for label, values in stage_rows.items()]
    return "\n".join(lines)


def finetune_summary(results: list[ColumnResult]) -> str:
    lines = []
    for result in results:
        history = next((c.finetune_history for c in result.cells if c.finetune_history), [])
        if history:
            first, last = history[0], history[-1]
            lines.append(f"- {result.column.name}: {last['iteration']} iterations; training loss "
                         f"{first['loss']:.3f} → {last['loss']:.3f}, accuracy {first['accuracy']:.3f} → "
                         f"{last['accuracy']:.3f}, foreground accuracy {first['fg_accuracy']:.3f} → "
                         f"{last['fg_accuracy']:.3f} (averages over the first and last {history[0]['iteration']} "
                         "iterations)")
    return "\n".join(lines)


def report(result: AblationResult, title: str, dataset: str, config: SPPConfig, machine: str,
           command: str, date: str) -> str:
    """The Markdown section for one ablation run."""
    columns = result.columns
    sizes = ", ".join(f"{r.column.name}: {r.train_images} trainval + {r.test_images} test images" for r in columns)
    proposals = ", ".join(f"{seconds:.0f} s for {split}" for split, seconds in result.proposals_s.items())
    ft = config.finetune
    return "\n".join([
        f"### {title}",
        "",
        f"- data: {dataset} ({sizes})",
        f"- backbone {config.features.backbone}, up to {config.proposals.max_proposals} proposals per image, "
        f"pyramid {config.features.pyramid_levels}, scale rule {config.features.scale_rule}, "
        f"projection {config.features.projection}",
        f"- fine-tuning: {ft.iterations} iterations of {ft.batch_size} windows, {ft.schedule} schedule, "
        f"fc width {ft.hidden or f'{FRESH_FC_WIDTH} (a fresh head; a pretrained one keeps its own)'}, {ft.scale_sampling} scale per window, flips {'on' if ft.flip else 'off'}",
        f"- machine: {machine}",
        f"- date: {date}",
        f"- command: `{command}`",
        "",
        "mAP (VOC07 11-point) on the test split:",
        "",
        map_table(columns),
        "",
        f"The same detections scored at IoU ≥ {STRICT_IOU} (localisation):",
        "",
        map_table(columns, strict=True),
        "",
        f"mAP at IoU 0.5 by object size, as `sppnet eval --by-size`: {size_ranges_text()}; the number of test "
        "objects of each size in brackets; –: no object of that size:",
        "",
        size_table(columns),
        "",
        f"Wall time per stage, in seconds. Selective search, which does not depend on the scales, ran once "
        f"before the columns: {proposals}. Within a column, a stage shared by several rows (conv maps, "
        "fine-tuning, box regression) runs in the first row that needs it and is read from the cache after.",
        "",
        timing_table(columns),
        "",
        "Fine-tuning (from the training log):",
        "",
        finetune_summary(columns) or "- (no fine-tuned row)",
        "",
        "<details><summary>Per-class AP (%)</summary>",
        "",
        ap_table(columns),
        "",
        "</details>",
    ])


def write_markdown_section(path: str | Path, section_id: str, body: str, header: str, command: str = "ablation") -> None:
    """Put ``body`` between this section's markers in ``path``: replaced if present, else appended.

    A new file starts with ``header``. Text outside the markers is kept as it is. The markers
    name ``command``, the `sppnet` subcommand that wrote the section.
    """
    path = Path(path)
    begin, end = f"<!-- {command} {section_id}: begin (generated by `sppnet {command}`) -->", \
        f"<!-- {command} {section_id}: end -->"
    text = path.read_text() if path.is_file() else header.rstrip() + "\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(path, text.encode())
