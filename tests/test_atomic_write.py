"""Whole-file writes of every output (model.pt, metrics.json, results, detections.json, caches): permissions and a full disk."""
import errno
import os

import pytest

import detection.core.cache as cache_module
from detection.core.cache import atomic_write_bytes


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_umask_permissions_not_0600(tmp_path, umask):
    before = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "out" / "model.pt", b"weights")
    finally:
        os.umask(before)
    path = tmp_path / "out" / "model.pt"
    assert path.read_bytes() == b"weights"
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


class FullDisk:
    """A file object whose writes fail as on a full disk."""

    def __init__(self, fd, mode):
        os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def writelines(self, chunks):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    monkeypatch.setattr(cache_module.os, "fdopen", FullDisk)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(path, b"new")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert str(path) in str(caught.value) and "No space left" in str(caught.value)
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_chunks_are_written_in_order_and_an_error_while_making_them_is_not_renamed(tmp_path):
    path = tmp_path / "detections.json"
    atomic_write_bytes(path, (f"{i}," .encode() for i in range(5)))
    assert path.read_text() == "0,1,2,3,4,"

    def reading_a_missing_file():
        yield b"["
        open(tmp_path / "missing.jsonl")

    with pytest.raises(FileNotFoundError) as caught:
        atomic_write_bytes(path, reading_a_missing_file())
    assert caught.value.filename == str(tmp_path / "missing.jsonl")
    assert path.read_text() == "0,1,2,3,4," and len(list(tmp_path.iterdir())) == 1
