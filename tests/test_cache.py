"""Per-image caches: entries checked against the content of the file they were computed from, the
entry format (memory-mapped reads), the file-hash index, and the free-disk check before a stage."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import detection.core.cache as cache_module
from detection.core.cache import Cache, CacheSpaceError
from detection.core.config import FIVE_SCALES, ConfigError, FeatureConfig, SPPConfig, fingerprint
from detection.core.hashing import file_sha1, state_hash
from detection.data.demo import make_demo_dataset
from detection.data.voc import VOCDataset
from detection.training.trainer import Trainer
from features.backbones import build_backbone
from features.extractor import SPPFeatureExtractor
from tools.cli import main

# -- the entry format ----------------------------------------------------------------------------------


def test_entries_round_trip_every_kind_of_array_read_or_mapped(tmp_path):
    cache = Cache(tmp_path)
    arrays = {"f16": np.arange(60, dtype=np.float16).reshape(3, 4, 5), "empty": np.zeros((0, 4), np.float32),
              "scalar": np.array(2.5), "text": np.array(json.dumps({"a": [1, 2]})), "flags": np.array([True, False]),
              "strided": np.arange(20, dtype=np.int64)[::3]}
    cache.put("s", "f", "k", arrays, source="abc")
    for mmap in (False, True):
        got = cache.get("s", "f", "k", source="abc", mmap=mmap)
        assert got.keys() == arrays.keys()
        for name, array in arrays.items():
            assert got[name].dtype == array.dtype and got[name].shape == array.shape
            np.testing.assert_array_equal(got[name], array)
    mapped = cache.get("s", "f", "k", source="abc", mmap=True)
    assert isinstance(mapped["f16"], np.memmap)
    mapped["f16"][0, 0, 0] = 99  # copy-on-write: the file never changes
    np.testing.assert_array_equal(cache.get("s", "f", "k", source="abc")["f16"], arrays["f16"])
    assert str(cache.get("s", "f", "k", source="abc")["text"]) == arrays["text"].item()


def test_objects_are_refused_and_torn_entries_are_recomputed(tmp_path):
    cache = Cache(tmp_path)
    with pytest.raises(TypeError, match="objects"):
        cache.put("s", "f", "k", {"a": np.array([{}, None], dtype=object)})
    cache.put("s", "f", "k", {"a": np.arange(1000.0)})
    path = cache.path("s", "f", "k")
    path.write_bytes(path.read_bytes()[:500])  # a truncated file (a disk error; writes are atomic)
    assert cache.get("s", "f", "k") is None and not path.exists()


# -- entries checked against their source file -------------------------------------------------------


def test_an_entry_from_another_source_is_stale_and_counted_once(tmp_path):
    cache = Cache(tmp_path)
    cache.put("s", "f", "000001", {"a": np.ones(2)}, source="sha-of-A")
    assert cache.has("s", "f", "000001", source="sha-of-A") and not cache.stale
    assert not cache.has("s", "f", "000001", source="sha-of-B")
    assert cache.get("s", "f", "000001", source="sha-of-B") is None
    assert cache.get("s", "f", "000001") is None  # an entry from a file is never served without one
    assert cache.stale == {("s", "f", "000001")}
    cache.put("s", "f", "000001", {"a": np.zeros(2)}, source="sha-of-B")
    np.testing.assert_array_equal(cache.get("s", "f", "000001", source="sha-of-B")["a"], np.zeros(2))


def test_file_hashes_are_remembered_until_the_file_changes(tmp_path, monkeypatch):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"first content")
    hashed = []
    monkeypatch.setattr(cache_module, "file_sha1", lambda path: hashed.append(path) or file_sha1(path))
    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)
    first = Cache(tmp_path / "cache").source(image)
    assert first == file_sha1(image) and len(hashed) == 1
    assert Cache(tmp_path / "cache").source(image) == first and len(hashed) == 1  # from sources.jsonl
    # replaced in place with the same size and the same mtime: the inode's ctime still moves
    stat = image.stat()
    with open(image, "r+b") as f:
        f.write(b"FIRST")
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert Cache(tmp_path / "cache").source(image) == file_sha1(image) != first
    assert Cache(tmp_path / "cache").source(tmp_path / "missing.jpg") is None


def test_a_file_hashed_right_after_it_changed_is_not_remembered(tmp_path, monkeypatch):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"just written")
    cache = Cache(tmp_path / "cache")
    hashed = []
    monkeypatch.setattr(cache_module, "file_sha1", lambda path: hashed.append(path) or file_sha1(path))
    cache.source(image), cache.source(image)
    assert len(hashed) == 2 and not (tmp_path / "cache" / cache_module.SOURCES_FILE).exists()


def test_torn_index_lines_are_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "RACY_SECONDS", 0.0)
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    cache = Cache(tmp_path / "cache")
    digest = cache.source(image)
    with open(tmp_path / "cache" / cache_module.SOURCES_FILE, "a") as f:
        f.write('{"path": "/x", "size"')
    assert Cache(tmp_path / "cache").source(image) == digest


def test_one_state_hash_for_the_whole_project():
    import detection.detector
    import features.finetune

    assert detection.detector.state_hash is features.finetune.state_hash is state_hash
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert state_hash(a) == state_hash(b)
    with torch.no_grad():
        b.bias[0] += 1
    assert state_hash(a) != state_hash(b)


# -- the conv cache ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_s16+s32", "alexnet", "vgg16", "zf5"])
def test_cache_bytes_bounds_the_stored_maps(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, pretrained=name == "efficientnet_lite0")
    extractor = SPPFeatureExtractor(backbone, FeatureConfig(backbone=name, scales=(120, 197)))
    image = np.random.default_rng(0).integers(0, 256, (150, 211, 3), dtype=np.uint8)
    stored = 2 * sum(m.numel() for m in extractor.compute_maps(image))
    estimate = extractor.cache_bytes(150, 211)
    assert stored <= estimate <= 2 * stored
    if name.startswith("efficientnet_lite0"):  # padded to a multiple of S (2S for two stages): exact
        assert estimate == stored


def test_conv_maps_are_checked_against_the_image_and_memory_mapped(tmp_path):
    backbone = build_backbone("efficientnet_lite0")
    cache = Cache(tmp_path)
    extractor = SPPFeatureExtractor(backbone, FeatureConfig(scales=(64, 96)), cache=cache)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2))
    maps_a, _ = extractor.maps("000001", lambda: a, "sha-a")
    assert extractor.cached("000001", "sha-a") and not extractor.cached("000001", "sha-b")
    again, size = extractor.maps("000001", lambda: pytest.fail("read although cached"), "sha-a")
    assert size == (60, 80) and all(torch.equal(x, y) for x, y in zip(maps_a, again))
    assert all(isinstance(m.numpy(), np.ndarray) for m in again)
    maps_b, _ = extractor.maps("000001", lambda: b, "sha-b")
    assert not torch.equal(maps_a[0], maps_b[0]) and ("conv", extractor.conv_fingerprint, "000001") in cache.stale
    uncached, _ = extractor.maps("000001", lambda: a, None)  # no source: the cache is not used
    assert torch.equal(uncached[0].half(), maps_a[0])


@pytest.mark.parametrize("precision, bytes_per_value", [("float16", 2), ("int8", 1)])
def test_conv_cache_precisions_round_trip(tmp_path, precision, bytes_per_value):
    backbone = build_backbone("efficientnet_lite0")
    config = FeatureConfig(scales=(64, 96), cache_precision=precision)
    extractor = SPPFeatureExtractor(backbone, config, cache=Cache(tmp_path))
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    exact = extractor.compute_maps(image)
    computed, _ = extractor.maps("k", lambda: image, "sha")
    read, _ = extractor.maps("k", lambda: pytest.fail("read although cached"), "sha")
    for fmap, first, again in zip(exact, computed, read):
        assert first.dtype == again.dtype == torch.float16 and torch.equal(first, again)
        bound = fmap.abs() / 2048  # fp16 rounding, and int8's half step
        if precision == "int8":
            bound = bound + fmap.abs().amax(dim=(1, 2))[:, None, None] / 254
        assert bool(((first.float() - fmap).abs() <= bound * 1.01 + 1e-6).all())
    entry = extractor.cache.path("conv", extractor.conv_fingerprint, "k").stat().st_size
    steps = 4 * sum(len(m) for m in exact) if precision == "int8" else 0  # a float32 step per channel and scale
    stored = bytes_per_value * sum(m.numel() for m in exact) + steps
    assert entry <= stored + 1024 and stored <= extractor.cache_bytes(60, 80)
    # fp16 entries keep their fingerprint; int8 ones have their own
    assert (extractor.conv_fingerprint == fingerprint(backbone.name, "", (64, 96))) == (precision == "float16")


def test_cache_precision_is_an_option(tmp_path):
    import argparse

    from tools.common import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert config_from_args(parser.parse_args(["--cache-precision", "int8"])).features.cache_precision == "int8"
    with pytest.raises(ConfigError, match="cache_precision"):
        FeatureConfig(cache_precision="int4")


# -- the free-disk check -------------------------------------------------------------------------


def test_check_space_is_one_line_with_the_estimate_and_the_free_space(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    cache = Cache(tmp_path / "not" / "made" / "yet")
    cache.check_space(10**9 - 1, "x")
    with pytest.raises(CacheSpaceError) as error:
        cache.check_space(37_700_000_000, "sppnet train (5011 images)")
    message = str(error.value)
    assert "\n" not in message and "37.70 GB" in message and "1.00 GB" in message and str(cache.root) in message


# -- whole runs: the scenarios of issue 9 -----------------------------------------------------------

TINY = SPPConfig().replace(proposals={"max_proposals": 40, "resize_width": 128}, features={"scales": (96,)},
                           svm={"feature_layer": "pool5"}, bbox={"enabled": False})


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """Two generated data sets whose images have the same ids but other content, and a model trained on A."""
    root = tmp_path_factory.mktemp("two-sets")
    a = make_demo_dataset(root / "a", num_trainval=4, num_test=3, seed=2, image_size=(128, 96))
    b = make_demo_dataset(root / "b", num_trainval=4, num_test=3, seed=7, image_size=(128, 96))
    trainer = Trainer(TINY, root / "train-a", device="cpu", progress=False, log=lambda line: None)
    assert trainer.train(VOCDataset(a, "trainval")) is not None
    return a, b, root / "train-a" / "model.pt"


def sppnet_test(data, model, out, *extra):
    assert main(["test", "--data", str(data), "--model", str(model), "--out", str(out), "--quiet",
                 "--device", "cpu", "--workers", "1", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_testing_b_into_an_out_dir_used_for_a_equals_a_fresh_run(two_sets, tmp_path, capsys):
    a, b, model = two_sets
    first_a = sppnet_test(a, model, tmp_path / "out")
    reused = sppnet_test(b, model, tmp_path / "out")
    assert "6 stale cache entries recomputed" in capsys.readouterr().out  # 3 images' proposals and maps
    assert reused == sppnet_test(b, model, tmp_path / "fresh")
    # the same through --cache-dir: A tested with the cache that now holds B's entries
    assert sppnet_test(a, model, tmp_path / "a-again", "--cache-dir", str(tmp_path / "fresh" / "cache")) == first_a
    assert "6 stale cache entries recomputed" in capsys.readouterr().out


@pytest.mark.slow
def test_an_image_replaced_in_place_is_recomputed(two_sets, tmp_path, capsys):
    a, b, model = two_sets
    data = tmp_path / "data"
    shutil.copytree(a, data)
    sppnet_test(data, model, tmp_path / "out")
    test_ids = (data / "ImageSets" / "Main" / "test.txt").read_text().split()
    shutil.copyfile(b / "JPEGImages" / f"{test_ids[0]}.jpg", data / "JPEGImages" / f"{test_ids[0]}.jpg")
    capsys.readouterr()
    replaced = sppnet_test(data, model, tmp_path / "out")
    assert "2 stale cache entries recomputed" in capsys.readouterr().out
    assert replaced == sppnet_test(data, model, tmp_path / "fresh")


@pytest.mark.slow
def test_training_b_in_a_work_dir_used_for_a_equals_a_fresh_run(two_sets, tmp_path):
    a, b, _ = two_sets
    lines = []
    Trainer(TINY, tmp_path / "w", device="cpu", progress=False, log=lambda line: None).train(VOCDataset(a, "trainval"))
    reused = Trainer(TINY, tmp_path / "w", device="cpu", progress=False, log=lines.append).train(
        VOCDataset(b, "trainval"))
    fresh = Trainer(TINY, tmp_path / "fresh", device="cpu", progress=False, log=lambda line: None).train(
        VOCDataset(b, "trainval"))
    assert "8 stale cache entries recomputed (computed from other image files than these)" in lines
    assert np.array_equal(reused.svm_weights, fresh.svm_weights) and reused.feature_scale == fresh.feature_scale


@pytest.mark.slow
def test_no_work_starts_when_the_disk_is_too_small(two_sets, tmp_path, monkeypatch, capsys):
    a, _, model = two_sets
    import proposals.store

    monkeypatch.setattr(proposals.store, "selective_search", lambda *args: pytest.fail("work started"))
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    assert main(["test", "--data", str(a), "--model", str(model), "--out", str(tmp_path / "out"), "--quiet",
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GB of cache under" in err and "only 0.00 GB is free" in err
    trainer = Trainer(TINY.replace(features={"scales": FIVE_SCALES}), tmp_path / "w", device="cpu", progress=False,
                      log=lambda line: None)
    with pytest.raises(CacheSpaceError, match=r"sppnet train \(4 images\) needs about"):
        trainer.train(VOCDataset(a, "trainval"))


def test_cache_benchmark_sizes_from_shapes_and_reads_every_format(tmp_path):
    from detection.runs.cache_benchmark import format_report, map_shapes, read_speed, size_row

    backbone = build_backbone("efficientnet_lite0")
    image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    extractor = SPPFeatureExtractor(backbone, FeatureConfig(scales=(64, 96)))
    assert map_shapes(backbone, 60, 80, (64, 96)) == [tuple(m.shape) for m in extractor.compute_maps(image)]
    row = size_row(backbone, 60, 80, (64, 96), tmp_path)
    assert row.cells == sum(h * w for _, h, w in map_shapes(backbone, 60, 80, (64, 96)))
    assert row.entry_bytes["int8"] < row.entry_bytes["float16"] <= row.npz_bytes + 1024
    assert row.dataset_gb(1000, "float16") == pytest.approx(1000 * row.entry_bytes["float16"] / 1e9)
    reads = read_speed(backbone, image, (64, 96), copies=2, directory=tmp_path, one_scale=1)
    assert [(r.method.split(",")[0], r.page_cache) for r in reads] == [
        (m, c) for m in ("npz (before)", "mapped fp16 entry", "mapped int8 entry", "mapped fp16 entry")
        for c in ("cold", "warm")]
    report = format_report([row], reads, 2, 1000, 60, 80, (64, 96))
    assert "| efficientnet_lite0 | 112 |" in report and "one scale (96)" in report
