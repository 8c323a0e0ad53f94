"""The ``--out`` directory of a batch: the jsonl stream, failures, settings for resuming, the merge of shards."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Sequence

from detection.core.cache import atomic_write_bytes
from detection.data.coco import coco_annotations, coco_categories
from detection.runs.batch.errors import BatchError
from detection.runs.batch.records import record_detections, record_key

PREDICTIONS = "predictions.jsonl"
DETECTIONS = "detections.json"
FAILED = "failed.tsv"
SETTINGS = "run.json"
PARTS = "parts"
VIS = "vis"
LOCK = ".lock"
MODEL_CLASSES = "model_classes"


def iter_records(path: Path) -> Iterator[dict]:
    """The records of a jsonl file one at a time, skipping a line torn by a crash (it is redone on the next run)."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def read_records(path: Path) -> list[dict]:
    """All of :func:`iter_records` (for small files and tests)."""
    return list(iter_records(path))


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


def record_line(record: dict) -> str:
    """A record as one jsonl line."""
    return json.dumps(record, separators=(",", ":")) + "\n"


class PredictionStream:
    """Appends one record per line to a jsonl file, flushed at once; cuts off a torn last line first."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_line(path)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Append one line; an OSError (a full disk) names the file."""
        try:
            self._file.write(record_line(record))
            self._file.flush()
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(self.path)) from err

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

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK if self.world == 1 else self.root / PARTS / f"{self._part}{LOCK}"

    def lock(self) -> IO[str]:
        """Lock this process's stream until the returned file is closed; a BatchError naming the holder if taken.

        Two runs into one ``OUT`` (or two runs of one shard) would both do all the work and write
        every line twice. The lock (``flock``) is released by the kernel when its holder exits,
        however it exits; the file holds the holder's pid, for the message.
        """
        path = self.lock_path
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise BatchError(f"{self.root}: in use by another sppnet detect (pid {holder}) writing {self.stream_path.name}; "
                             "wait for it to end or use another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return handle

    def _part_streams(self) -> list[Path]:
        return sorted((self.root / PARTS).glob("*.jsonl"))

    def done_files(self) -> set[str]:
        """The key (:func:`record_key`) of every image with a record in ``predictions.jsonl`` or a shard's part."""
        return {record_key(r) for path in [self.root / PREDICTIONS, *self._part_streams()] for r in iter_records(path)}

    def check_settings(self, settings: dict, classes: Sequence[str]) -> None:
        """Record the run's settings and the model's ``classes``, or refuse to resume a run made with other settings.

        The classes follow from the model (its hash is among the settings); they are kept for
        reading the records without it (``sppnet filter``), and added to a ``run.json`` without them.
        """
        path = self.root / SETTINGS
        before = json.loads(path.read_text()) if path.is_file() else None
        if before is not None:
            changed = sorted(k for k in (settings.keys() | before.keys()) - {MODEL_CLASSES}
                             if settings.get(k) != before.get(k))
            if changed:
                raise BatchError(f"{self.root}: made by a run with other settings ({', '.join(changed)}); "
                                 "use another --out, or remove it to start over")
        if before is None or MODEL_CLASSES not in before:
            atomic_write_bytes(path, json.dumps({**settings, MODEL_CLASSES: list(classes)}, indent=2).encode())

    def settings(self) -> dict:
        """``run.json``: the settings of the run that made this directory; a BatchError if there is none."""
        try:
            return json.loads((self.root / SETTINGS).read_text())
        except (OSError, ValueError) as err:
            raise BatchError(f"{self.root}: not an output of sppnet detect (no readable {SETTINGS}: {err})") from None

    def all_shards_done(self) -> bool:
        return all((self.root / PARTS / f"shard{i}-of-{self.world}.done").is_file() for i in range(self.world))

    def merge(self, classes: Sequence[str], failures: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
        """Write ``predictions.jsonl`` (with every part's records), ``detections.json`` and ``failed.tsv``.

        ``failures`` adds to those the parts recorded; images done meanwhile are not failures.
        Parts are opened before ``predictions.jsonl`` and it is replaced atomically, so two merges
        at once (two shards finishing together) both write every record. The records are streamed
        from the files, not held: what is kept per image is its key and where its line is.
        Returns the number of images with detections and the remaining failures.
        """
        with contextlib.ExitStack() as stack:
            parts = [stack.enter_context(open(path, "rb")) for path in self._part_streams()]
            main = self.root / PREDICTIONS
            streams = ([stack.enter_context(open(main, "rb"))] if main.is_file() else []) + parts
            first_part = len(streams) - len(parts)
            lines: dict[str, tuple[int, int]] = {}  # key -> (stream, offset of its line), first one wins
            for number, stream in enumerate(streams):
                for offset, record in _scan(stream):
                    lines.setdefault(record_key(record), (number, offset))
            if any(number >= first_part for number, _ in lines.values()):
                atomic_write_bytes(main, (_line_at(streams[n], offset) for n, offset in lines.values()))
            keys = sorted(lines)
            atomic_write_bytes(self.root / DETECTIONS, _coco_chunks(
                keys, lambda key: json.loads(_line_at(streams[lines[key][0]], lines[key][1])), classes))
        failed = dict(failures or {})
        for path in sorted((self.root / PARTS).glob("*.failed.tsv")):
            failed.update(read_failures(path))
        failed = {key: reason for key, reason in failed.items() if key not in lines}
        write_failures(self.root / FAILED, failed)
        return len(lines), failed


def _scan(stream: IO[bytes]) -> Iterator[tuple[int, dict]]:
    """(offset, record) of each readable line of a jsonl file open in binary mode (a torn line is skipped)."""
    offset = 0
    for line in stream:
        try:
            yield offset, json.loads(line)
        except ValueError:
            pass
        offset += len(line)


def _line_at(stream: IO[bytes], offset: int) -> bytes:
    stream.seek(offset)
    line = stream.readline()
    return line if line.endswith(b"\n") else line + b"\n"


def _coco_chunks(keys: Sequence[str], record: Callable[[str], dict], classes: Sequence[str]) -> Iterator[bytes]:
    """``detections.json`` (:func:`detection.data.coco.detections_to_coco`'s layout) in pieces, image ids 1..N in ``keys`` order.

    Reads each image's record twice (for ``images``, then ``annotations``) rather than keeping them.
    """
    def dump(value) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode()

    info = {"description": "sppnet detect", "box_format": "[x, y, w, h], w = x2 - x1 + 1"}
    yield b'{"info":' + dump(info) + b',"images":['
    for image_id, key in enumerate(keys, start=1):
        r = record(key)
        yield (b"," if image_id > 1 else b"") + dump(
            {"id": image_id, "file_name": key, "width": r["width"], "height": r["height"]})
    yield b'],"categories":' + dump(coco_categories(classes)) + b',"annotations":['
    first = 1
    for image_id, key in enumerate(keys, start=1):
        for ann in coco_annotations(image_id, record_detections(record(key), classes), first_id=first):
            yield (b"," if first > 1 else b"") + dump(ann)
            first += 1
    yield b"]}"
