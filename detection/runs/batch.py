"""Detection over many image files (``sppnet detect``): inputs, pipelined proposals, streamed and resumable outputs, shards.

The work flows in two stages. A pool of worker processes reads each image (:func:`load_image`: EXIF
orientation, grayscale, palette, alpha, 16-bit, CMYK) and runs selective search on it; the main
process runs the conv layers and scores the windows. At most two images per worker are in flight,
so workers stay busy while memory stays bounded, and the main process only waits when the workers
cannot keep up; that waiting time is measured and reported.

Outputs under ``OUT``:

- ``predictions.jsonl``: one line per image as soon as it is done (flushed, so a crash loses
  nothing finished): ``{"file", "width", "height", "detections": [{"box": [x1, y1, x2, y2],
  "score", "probability", "label"}]}``, absolute file paths, 0-based inclusive pixel boxes, scores
  as the model gives them (SVM margins: 0 is the decision boundary) and, from a calibrated model,
  probabilities in [0, 1] (svm/calibration.py);
- ``detections.json``: the same in COCO format (:mod:`detection.data.coco`), rebuilt from the jsonl
  lines at the end of every run, one image per file (ids 1..N in file order), so it never holds
  an image twice;
- ``failed.tsv``: ``path<TAB>reason`` of each image that failed, one line each;
- ``vis/``: with ``save_vis``, each image with its detections drawn, at its path relative to the
  deepest directory holding all inputs;
- ``run.json``: the model's hash and the filters. A rerun with the same ``OUT`` skips the images
  already in the jsonl (failed ones are tried again); it refuses other settings, which would mix
  two kinds of results in one file.

Sharding: shard ``i`` of ``n`` takes every n-th file of the sorted input list from the i-th on, and
streams to ``parts/shard<i>-of-<n>.jsonl`` (failures to ``.failed.tsv``) instead of
``predictions.jsonl``. The shards are merged into ``predictions.jsonl``, ``detections.json`` and
``failed.tsv`` by rank 0 after a barrier under ``torchrun``, or, for independent ``--shard`` runs,
by whichever shard finishes last (each leaves a ``.done`` marker; merging twice is harmless).
Parts are kept after merging, as another shard may still be appending to its own.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from detection.core.cache import atomic_write_bytes
from detection.data.coco import detections_to_coco
from detection.core.config import ProposalConfig
from detection.core.errors import SppnetError
from detection.core.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, ImageError, load_image
from detection.core.detections import Detections
from detection.results import Result
from proposals.selective_search import selective_search

PREDICTIONS = "predictions.jsonl"
DETECTIONS = "detections.json"
FAILED = "failed.tsv"
SETTINGS = "run.json"
PARTS = "parts"
VIS = "vis"

IN_FLIGHT_PER_WORKER = 2
# A rank that finishes early waits for the slowest at the final barrier; gloo's default 30 minutes
# is far too short for an uneven split of a large input.
BARRIER_TIMEOUT = timedelta(days=2)


class BatchError(SppnetError, ValueError):
    """Bad batch input or output directory; the message names it."""


# -- inputs ---------------------------------------------------------------------------------------

def find_images(inputs: Sequence[str], list_file: str | os.PathLike | None = None) -> list[str]:
    """Files, directories, glob patterns and the lines of ``list_file`` -> sorted unique absolute paths.

    Directories are searched recursively and glob matches filtered, both for the image extensions
    (JPEG, PNG, BMP, TIFF, WebP, any case). A file named directly (or in ``list_file``) is taken
    whatever its name, and so is a path that does not exist: it then fails with its reason like
    any unreadable image, instead of stopping the batch.
    """
    items = list(inputs) + (read_list_file(list_file) if list_file is not None else [])
    found: set[str] = set()
    for item in items:
        found.update(_expand(item))
    return sorted(found)


def read_list_file(path: str | os.PathLike) -> list[str]:
    """The paths in a ``--list`` file: one per line, blank lines and ``#`` comments skipped.

    Relative paths are taken relative to the current directory, as on the command line.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BatchError(f"{path}: cannot read the list of images ({err})") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _expand(item: str) -> list[str]:
    path = Path(item)
    if path.is_dir():
        return [os.path.abspath(p) for p in path.rglob("*") if _is_image_name(p) and p.is_file()]
    if not path.exists() and glob.has_magic(item):
        matches = [Path(m) for m in glob.glob(item, recursive=True)]
        if matches:
            return [p for m in matches for p in (_expand(str(m)) if m.is_dir() else
                                                  [os.path.abspath(m)] if _is_image_name(m) else [])]
    return [os.path.abspath(path)]


def shard(paths: Sequence[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count`` of a sorted list: every count-th path from the index-th (balanced to ±1)."""
    if not 0 <= index < count:
        raise BatchError(f"shard {index}/{count}: need 0 <= index < count")
    return list(paths[index::count])


def common_root(paths: Sequence[str]) -> Path:
    """The deepest directory holding every path: visualisations keep the layout below it."""
    return Path(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else Path("/")


# -- reading and proposals, in worker processes ------------------------------------------------------

@dataclass(frozen=True)
class ReadOptions:
    """How each image is read and proposed; ``min_side`` and ``max_pixels`` reject unusable images."""

    proposals: ProposalConfig
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 1


@dataclass
class Prepared:
    """One image ready for the conv stage: ``image`` (H, W, 3) uint8 RGB and ``boxes`` (N, 4), or a ``reason``."""

    path: str
    image: np.ndarray | None = None
    boxes: np.ndarray | None = None
    reason: str | None = None


def prepare_image(path: str, options: ReadOptions) -> Prepared:
    """Read and decode one image and run selective search on it; any failure becomes a reason.

    Runs in a worker process: the reason travels back as a string, and an unexpected error from a
    decoder or OpenCV fails this image rather than the batch.
    """
    try:
        image = load_image(path, max_pixels=options.max_pixels, min_side=options.min_side)
    except ImageError as err:
        return Prepared(path, reason=err.reason)
    try:
        boxes = selective_search(image, options.proposals)
    except Exception as err:  # noqa: BLE001 - one image's failure must not end a batch of millions
        return Prepared(path, reason=f"selective search failed ({type(err).__name__}: {err})")
    return Prepared(path, image, boxes)


class ProposalPipeline:
    """Prepared images in completion order, computed ahead in ``workers`` processes (0: in this one).

    ``wait_seconds`` adds up the time the consumer spent waiting for the next image: with enough
    workers it stays near zero after the pool has started.
    """

    def __init__(self, options: ReadOptions, workers: int):
        self.options = options
        self.workers = workers
        self.wait_seconds = 0.0

    def __call__(self, paths: Iterable[str]) -> Iterator[Prepared]:
        return self._inline(paths) if self.workers <= 0 else self._pooled(iter(paths))

    def _inline(self, paths: Iterable[str]) -> Iterator[Prepared]:
        for path in paths:
            start = time.perf_counter()
            prepared = prepare_image(path, self.options)
            self.wait_seconds += time.perf_counter() - start
            yield prepared

    def _pooled(self, paths: Iterator[str]) -> Iterator[Prepared]:
        pool = self._new_pool()
        pending: dict[Future, str] = {}
        try:
            while True:
                path = None
                try:
                    while len(pending) < IN_FLIGHT_PER_WORKER * self.workers and (path := next(paths, None)):
                        pending[pool.submit(prepare_image, path, self.options)] = path
                except BrokenProcessPool:
                    # a worker died since the last wait: this image waits for the next pool
                    paths = itertools.chain([path], paths)
                    if not pending:
                        pool = self._replace(pool)
                        continue
                if not pending:
                    return
                start = time.perf_counter()
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                self.wait_seconds += time.perf_counter() - start
                results = [self._result(future, pending.pop(future)) for future in done]
                if any(r.reason == _WORKER_DIED for r in results):
                    # a dead worker breaks the pool and fails every image it held: collect them
                    # all (they are failing now), then a new pool serves the rest
                    rest, _ = wait(pending)
                    results += [self._result(future, pending.pop(future)) for future in rest]
                    pool = self._replace(pool)
                yield from results
        finally:
            # on an interruption, wait only for the images being worked on, not the whole queue
            pool.shutdown(wait=True, cancel_futures=True)

    def _replace(self, pool: ProcessPoolExecutor) -> ProcessPoolExecutor:
        pool.shutdown(wait=False)
        return self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: OpenCV's thread pool state does not survive fork (opencv/opencv#5150)
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))

    @staticmethod
    def _result(future: Future, path: str) -> Prepared:
        try:
            return future.result()
        except BrokenProcessPool:
            return Prepared(path, reason=_WORKER_DIED)


_WORKER_DIED = ("a worker process died while this image was in flight (a decoder crash or out of "
                "memory; it may be another image of the same moment): rerun to retry")


# -- filters and records -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DetectionFilter:
    """Keep detections scoring (margin) at least ``min_score`` and of probability at least
    ``min_probability``, of the class indices ``labels``, at most ``topk`` per image, best first
    (by probability when the detections have them, else by margin)."""

    min_score: float | None = None
    topk: int | None = None
    labels: tuple[int, ...] | None = None
    min_probability: float | None = None

    def __call__(self, dets: Detections) -> Detections:
        keep = np.ones(len(dets), dtype=bool)
        if self.min_score is not None:
            keep &= np.asarray(dets.scores) >= self.min_score
        if self.min_probability is not None:
            if dets.probabilities is None:
                raise BatchError("a probability threshold needs a calibrated model (trained with calibration)")
            keep &= np.asarray(dets.probabilities) >= self.min_probability
        if self.labels is not None:
            keep &= np.isin(dets.labels, self.labels)
        order = np.flatnonzero(keep)
        order = order[np.argsort(-dets.confidences[order], kind="stable")][: self.topk]
        return dets.select(order)


def class_indices(names: Sequence[str], classes: Sequence[str]) -> tuple[int, ...]:
    """Class names -> their indices in the model's ``classes``; an unknown name is a BatchError."""
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise BatchError(f"--classes: {', '.join(unknown)} not among the model's classes ({', '.join(classes)})")
    return tuple(classes.index(name) for name in names)


def prediction_record(path: str, image_size: tuple[int, int], dets: Detections, classes: Sequence[str]) -> dict:
    """One ``predictions.jsonl`` line (as a dict); ``image_size`` is (height, width).

    Each detection has its ``score`` (the SVM margin) and, from a calibrated model, its ``probability``.
    """
    items = [{"box": [round(float(v), 2) for v in box], "score": float(score), "label": classes[int(label)]}
             for box, score, label in zip(dets.boxes, dets.scores, dets.labels)]
    if dets.probabilities is not None:
        for item, probability in zip(items, dets.probabilities):
            item["probability"] = round(float(probability), 6)
    return {"file": path, "width": int(image_size[1]), "height": int(image_size[0]), "detections": items}


def record_detections(record: dict, classes: Sequence[str]) -> Detections:
    """A ``predictions.jsonl`` record's detections, labels as indices into ``classes``."""
    items = record["detections"]
    calibrated = bool(items) and all("probability" in d for d in items)
    return Detections(np.array([d["box"] for d in items], dtype=np.float64).reshape(-1, 4),
                      np.array([d["score"] for d in items], dtype=np.float64),
                      np.array([classes.index(d["label"]) for d in items], dtype=np.int64),
                      np.array([d["probability"] for d in items], dtype=np.float64) if calibrated else None)


# -- the output directory ----------------------------------------------------------------------------

def read_records(path: Path) -> list[dict]:
    """The records of a jsonl file, skipping a line torn by a crash (it is redone on the next run)."""
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def read_failures(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    rows = (line.split("\t", 1) for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line)
    return {file: reason for file, reason in rows}


def _tsv_field(text: str) -> str:
    # a file name or an error message with a tab or newline would break the one-line rows
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_failures(path: Path, failures: dict[str, str]) -> None:
    lines = "".join(f"{_tsv_field(file)}\t{_tsv_field(reason)}\n" for file, reason in sorted(failures.items()))
    atomic_write_bytes(path, lines.encode("utf-8"))


class PredictionStream:
    """Appends one record per line to a jsonl file, flushed at once; cuts off a torn last line first."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_line(path)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _truncate_torn_line(path: Path, block: int = 1 << 16) -> None:
    """Drop a last line without its newline (a crash mid-write), so the next line starts cleanly.

    Reads the file backwards from its end, a block at a time: a resumed file can be gigabytes.
    """
    if not path.is_file():
        return
    with open(path, "rb+") as stream:
        end = position = stream.seek(0, os.SEEK_END)
        while position > 0:
            start = max(0, position - block)
            stream.seek(start)
            chunk = stream.read(position - start)
            if position == end and chunk.endswith(b"\n"):
                return
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                stream.truncate(start + newline + 1)
                return
            position = start
        stream.truncate(0)


@dataclass
class OutputDir:
    """The files of one ``--out`` directory, seen from shard ``rank`` of ``world``."""

    root: Path
    rank: int = 0
    world: int = 1

    @property
    def _part(self) -> str:
        return f"shard{self.rank}-of-{self.world}"

    @property
    def stream_path(self) -> Path:
        return self.root / PREDICTIONS if self.world == 1 else self.root / PARTS / f"{self._part}.jsonl"

    @property
    def failures_path(self) -> Path:
        return self.root / FAILED if self.world == 1 else self.root / PARTS / f"{self._part}.failed.tsv"

    @property
    def done_marker(self) -> Path:
        return self.root / PARTS / f"{self._part}.done"

    def _part_streams(self) -> list[Path]:
        return sorted((self.root / PARTS).glob("*.jsonl"))

    def done_files(self) -> set[str]:
        """Every file with a record in ``predictions.jsonl`` or a shard's part."""
        return {r["file"] for path in [self.root / PREDICTIONS, *self._part_streams()] for r in read_records(path)}

    def check_settings(self, settings: dict) -> None:
        """Record the run's settings, or refuse to resume one made with others."""
        path = self.root / SETTINGS
        if path.is_file():
            before = json.loads(path.read_text())
            changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
            if changed:
                raise BatchError(f"{self.root}: made by a run with other settings ({', '.join(changed)}); "
                                 "use another --out, or remove it to start over")
            return
        atomic_write_bytes(path, json.dumps(settings, indent=2).encode())

    def all_shards_done(self) -> bool:
        return all((self.root / PARTS / f"shard{i}-of-{self.world}.done").is_file() for i in range(self.world))

    def merge(self, classes: Sequence[str], failures: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        """Write ``predictions.jsonl`` (with every part's records), ``detections.json`` and ``failed.tsv``.

        ``failures`` adds to those the parts recorded; files done meanwhile are not failures.
        Parts are read before ``predictions.jsonl`` and it is replaced atomically, so two merges
        at once (two shards finishing together) both write every record.
        Returns the number of images with detections and the remaining failures.
        """
        part_records = [r for path in self._part_streams() for r in read_records(path)]
        records = {r["file"]: r for r in read_records(self.root / PREDICTIONS)}
        merged = len(records)
        for record in part_records:
            records.setdefault(record["file"], record)
        if len(records) > merged:
            lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records.values())
            atomic_write_bytes(self.root / PREDICTIONS, lines.encode("utf-8"))
        self._write_coco(sorted(records.values(), key=lambda r: r["file"]), classes)
        failed = dict(failures or {})
        for path in sorted((self.root / PARTS).glob("*.failed.tsv")):
            failed.update(read_failures(path))
        failed = {file: reason for file, reason in failed.items() if file not in records}
        write_failures(self.root / FAILED, failed)
        return len(records), failed

    def _write_coco(self, records: list[dict], classes: Sequence[str]) -> None:
        images = [{"id": i, "file_name": r["file"], "width": r["width"], "height": r["height"]}
                  for i, r in enumerate(records, start=1)]
        coco = detections_to_coco(images, [record_detections(r, classes) for r in records], classes,
                                  info={"description": "sppnet detect", "box_format": "[x, y, w, h], w = x2 - x1 + 1"})
        atomic_write_bytes(self.root / DETECTIONS, json.dumps(coco, separators=(",", ":")).encode())


def file_sha1(path: str | os.PathLike) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- the run -------------------------------------------------------------------------------------------

@dataclass
class BatchSummary:
    """What one process did: ``done`` now, ``skipped`` (done by an earlier run), ``failed`` path -> reason."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    wait_seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def wait_share(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


def _report_failure(path: str, reason: str) -> None:
    tqdm.write(f"failed: {path}: {reason}", file=sys.stderr)


def detect_files(detector, paths: Sequence[str], out: OutputDir, options: ReadOptions,
                 keep: DetectionFilter = DetectionFilter(), workers: int = 1,
                 vis_root: Path | None = None, progress: bool = True,
                 on_failure: Callable[[str, str], None] = _report_failure) -> BatchSummary:
    """Detect in every path not already done in ``out``, streaming each record as it is finished.

    ``detector`` is a :class:`~detection.detector.Detector`. Failures are reported through
    ``on_failure`` as they happen and written to ``out.failures_path`` at the end. With
    ``vis_root``, each image is also drawn to ``out.root/vis/<path relative to vis_root>``.
    """
    done = out.done_files()
    todo = [p for p in paths if p not in done]
    summary = BatchSummary(skipped=len(paths) - len(todo))
    pipeline = ProposalPipeline(options, workers)
    stream = PredictionStream(out.stream_path)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="img", desc=_bar_label(out), disable=not progress, smoothing=0.1)
    try:
        for prepared in pipeline(todo):
            if prepared.reason is None:
                prepared.reason = _detect_one(detector, prepared, out, stream, keep, vis_root)
            if prepared.reason is None:
                summary.done += 1
            else:
                summary.failed[prepared.path] = prepared.reason
                on_failure(prepared.path, prepared.reason)
            bar.update()
            bar.set_postfix(waiting=f"{pipeline.wait_seconds / max(time.perf_counter() - start, 1e-9):.0%}",
                            refresh=False)
    finally:
        bar.close()
        stream.close()
        summary.seconds = time.perf_counter() - start
        summary.wait_seconds = pipeline.wait_seconds
        write_failures(out.failures_path, summary.failed)
    return summary


def _bar_label(out: OutputDir) -> str:
    return "detect" if out.world == 1 else f"detect {out.rank}/{out.world}"


def _detect_one(detector, prepared: Prepared, out: OutputDir, stream: PredictionStream, keep: DetectionFilter,
                vis_root: Path | None) -> str | None:
    """Detect in one prepared image, stream its record (and picture); a failure's reason, or None."""
    try:
        dets = keep(detector.detect(prepared.image, prepared.boxes))
    except RuntimeError as err:  # e.g. out of GPU memory on a huge image: fail it, go on
        return f"detection failed ({type(err).__name__}: {err})"
    stream.write(prediction_record(prepared.path, prepared.image.shape[:2], dets, detector.classes))
    if vis_root is not None:
        target = out.root / VIS / Path(prepared.path).relative_to(vis_root)
        Result(prepared.image, dets, detector.classes, prepared.path).save(target)
    return None


def share_cores(workers: int) -> None:
    """On a CPU, give torch in this process the cores the proposal workers leave (at least one).

    Conv threads competing with the workers for the same cores make both slower than either
    alone (measured in docs/benchmarks.md). An explicit OMP_NUM_THREADS (torchrun sets 1) wins.
    """
    import torch

    if "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores - max(0, workers)))


# -- torch.distributed ------------------------------------------------------------------------------

def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment variables; (0, 1, 0) without them."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as err:
        raise BatchError(f"RANK/WORLD_SIZE/LOCAL_RANK: not integers ({err})") from None


def gather_counts(counts: Sequence[int]) -> list[int]:
    """Sum ``counts`` over all ranks, which also waits for every rank (the final barrier).

    Joins a gloo process group (env:// rendezvous from torchrun) only here, at the end: no rank
    needs the others before, so a slow start of one rank delays nobody.
    """
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        total = torch.tensor(list(counts), dtype=torch.int64)
        dist.all_reduce(total)
        return total.tolist()
    finally:
        dist.destroy_process_group()
