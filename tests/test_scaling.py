"""`sppnet scaling`: per-stage time, disk and peak memory over training-set sizes, and the growth fit."""
import json

import numpy as np
import pytest

from detection.core.config import SPPConfig
from detection.data.demo import make_demo_dataset
from detection.data.voc import VOCDataset
from detection.runs.scaling import (
    TEST_STAGE,
    PeakMemory,
    StageCost,
    current_rss_bytes,
    extrapolate,
    fit_growth,
    growth_table,
    measure_scaling,
)
from tools.cli import main

TINY = SPPConfig().replace(
    proposals={"max_proposals": 40, "resize_width": 160},
    svm={"feature_layer": "pool5"},
    bbox={"enabled": False},
)


def test_peak_memory_sees_an_allocation_that_is_gone_at_the_end():
    with PeakMemory(interval=0.005) as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    assert memory.peak_bytes >= current_rss_bytes() + 150 * 2**20


def cost(images, cpu, stage="svm", scales=1):
    return StageCost(scales, images, stage, wall_s=2 * cpu, cpu_s=cpu, peak_rss_bytes=1, disk_bytes=1)


def test_growth_fit_recovers_a_line_and_flags_faster_growth():
    linear = [cost(n, 3.0 + 0.5 * n, "conv") for n in (10, 20, 40, 80)]
    quadratic = [cost(n, 0.01 * n * n, "svm") for n in (10, 20, 40, 80)]
    test = [cost(20, 99.0, TEST_STAGE)]
    conv, svm = fit_growth(linear + quadratic + test)  # the test stage is not per training image
    assert (conv.stage, svm.stage) == ("conv", "svm")
    assert conv.fixed_s == pytest.approx(3.0) and conv.per_image_s == pytest.approx(0.5)
    assert conv.largest_ratio == pytest.approx(1.0) and extrapolate(conv, 5011) == pytest.approx(3.0 + 0.5 * 5011)
    assert svm.largest_ratio > 1.05  # above its line at the largest size: faster than linear
    table = growth_table([conv], {"VOC": 7200})
    assert "| 1 | conv | 3.0 | 0.500 | 1.00 | 1.0 |" in table  # 3 + 0.5 * 7200 s = 1.0 h


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:classes .* have no positives:RuntimeWarning")
def test_each_stage_of_each_size_is_measured_from_an_empty_cache(tmp_path):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=3, num_test=1, seed=1, image_size=(160, 120))
    train, test = VOCDataset(voc, "trainval"), VOCDataset(voc, "test")
    (tmp_path / "out" / "1-scale" / "3").mkdir(parents=True)
    (tmp_path / "out" / "1-scale" / "3" / "stale").write_bytes(b"x" * 10_000_000)  # removed before the run
    costs = measure_scaling(TINY, train, test, tmp_path / "out", sizes=(1, 3), scale_sets=[(96,)], test_images=1,
                            device="cpu", log=lambda _: None)
    assert [(c.images, c.stage) for c in costs] == [(n, s) for n in (1, 3) for s in ("proposals", "conv", "svm", "test")]
    by = {(c.images, c.stage): c for c in costs}
    assert all(c.wall_s > 0 and c.cpu_s > 0 and c.peak_rss_bytes > 0 and c.scales == 1 for c in costs)
    # the cache grows per image: more maps and proposals on disk for 3 images than for 1
    assert by[3, "conv"].disk_bytes > by[1, "conv"].disk_bytes > by[1, "proposals"].disk_bytes > 0
    assert by[3, "svm"].disk_bytes < 10_000_000 and by[3, "test"].test_images == 1
    with pytest.raises(ValueError, match="size 4"):
        measure_scaling(TINY, train, test, tmp_path / "out", sizes=(4,), scale_sets=[(96,)])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:classes .* have no positives:RuntimeWarning")
def test_scaling_command_writes_json_and_a_doc_section(tmp_path, capsys):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=2, num_test=1, seed=1, image_size=(160, 120))
    doc = tmp_path / "bench.md"
    doc.write_text("# Benchmarks\n\nhand-written text\n")
    args = ["scaling", "--data", str(voc), "--out", str(tmp_path / "out"), "--sizes", "1,2", "--columns", "1",
            "--test-images", "0", "--json", str(tmp_path / "s.json"), "--doc", str(doc), "--feature-layer", "pool5",
            "--no-bbox-reg", "--max-proposals", "30", "--proposal-width", "160", "--device", "cpu", "--quiet"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [(r["images"], r["stage"]) for r in rows] == [(n, s) for n in (1, 2) for s in ("proposals", "conv", "svm")]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written text\n") and "<!-- scaling data-VOC2007: begin" in text
    assert "| 1 | conv |" in text and "CPU h at VOC07 trainval (5,011)" in text
    assert main(args) == 0  # measured again: the section is replaced, not repeated
    assert doc.read_text().count("<!-- scaling data-VOC2007: begin") == 1
    capsys.readouterr()
