"""The ``--out`` directory of a batch: the jsonl stream, failures, settings for resuming, the merge of shards."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from detection.core.cache import atomic_write_bytes
from detection.data.coco import detections_to_coco
from detection.runs.batch.errors import BatchError
from detection.runs.batch.records import record_detections

PREDICTIONS = "predictions.jsonl"
DETECTIONS = "detections.json"
FAILED = "failed.tsv"
SETTINGS = "run.json"
PARTS = "parts"
VIS = "vis"


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
