"""`sppnet benchmark`: the helpers, and the command end to end on a tiny generated set."""
import json

import numpy as np
import pytest
import torch

from detection.runs.benchmark import (
    MODES, STEPS, BenchmarkError, Stopwatch, fixed_proposals, format_report, peak_memory, reset_peak_memory,
)
from detection.data.demo import make_demo_dataset
from tools.cli import main


def test_fixed_proposals_repeat_or_cut_to_exactly_p():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 5, 5], [2, 2, 8, 8]], float)
    padded = fixed_proposals(boxes, 7)
    assert padded.shape == (7, 4) and (padded[3:6] == boxes).all() and (padded[6] == boxes[0]).all()
    assert (fixed_proposals(boxes, 2) == boxes[:2]).all()
    with pytest.raises(BenchmarkError, match="no windows"):
        fixed_proposals(np.zeros((0, 4)), 5)


def test_stopwatch_accumulates_sections():
    watch = Stopwatch(torch.device("cpu"))
    for _ in range(2):
        with watch.section("a"):
            sum(range(1000))
    assert set(watch.seconds) == {"a"} and watch.seconds["a"] > 0


def test_peak_memory_after_reset():
    reset_peak_memory(torch.device("cpu"))
    block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB touched
    peaks = peak_memory(torch.device("cpu"))
    assert peaks["peak_gpu_mb"] is None
    assert peaks["peak_cpu_rss_mb"] is None or peaks["peak_cpu_rss_mb"] > 64
    del block


def test_format_report_is_the_papers_table():
    times = {"conv": 1.0, "pool_fc": 0.2, "svm_nms_bbox": 0.1, "total": 1.3}
    row = {"images": 2, **times, "cpu": times, "peak_cpu_rss_mb": 100.0, "peak_gpu_mb": None}
    ratios = {"speedup_1scale": 77.2, "speedup_conv_1scale": 100.0, "speedup_5scale": 77.2, "speedup_conv_5scale": 100.0}
    report = {"backbone": "alexnet", "device": "cpu: test", "proposals_per_image": 2000, "rcnn_images": 1,
              "images": 2, "proposal_seconds": 1.5, "proposals_found_per_image": 1800.0,
              "rcnn": {**row, "crop_size": 227, "conv": 100.0, "total": 100.3},
              "spp_1scale": {**row, "scales": [688]}, "spp_5scale": {**row, "scales": [480, 688]},
              **ratios, "cpu_time": ratios}
    table = format_report(report)
    lines = table.splitlines()
    # a wall-clock table, then a CPU-time one
    assert [line.split("|")[1].strip() for line in lines if line.startswith("| ") and "method" not in line] == [
        "R-CNN", "SPP-net 1-scale", "SPP-net 5-scale"] * 2
    assert "77.2×" in table and "100.0×" in table and "227² crops" in table and "480,688" in table


@pytest.mark.slow
def test_benchmark_command_writes_the_report(tmp_path, capsys):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=1, num_test=2, seed=2)
    out = tmp_path / "bench.json"
    tiny = ["--max-proposals", "6", "--rcnn-batch-size", "4", "--single-scale", "200", "--scales", "160,240",
            "--device", "cpu", "--threads", "1", "--quiet"]
    assert main(["benchmark", "--data", str(voc), "--split", "test", "--num-images", "2", "--json", str(out),
                 *tiny]) == 0
    report = json.loads(out.read_text())
    assert report["device"].startswith("cpu") and "1 torch threads" in report["device"] and report["images"] == 2 and report["rcnn_images"] == 2
    assert report["proposals_per_image"] == 6 and report["proposal_seconds"] > 0 and report["model"] is None
    assert report["spp_1scale"]["scales"] == [200] and report["spp_5scale"]["scales"] == [160, 240]
    assert report["rcnn"]["crop_size"] == 224 and report["rcnn"]["batch_size"] == 4
    for mode in MODES:
        row = report[mode]
        assert row["total"] == pytest.approx(sum(row[step] for step in STEPS))
        assert all(row[step] > 0 for step in STEPS) and row["cpu"]["total"] > 0 and row["peak_gpu_mb"] is None
    for suffix in ("1scale", "5scale"):
        spp = report[f"spp_{suffix}"]
        assert report[f"speedup_{suffix}"] == pytest.approx(report["rcnn"]["total"] / spp["total"])
        assert report[f"speedup_conv_{suffix}"] == pytest.approx(report["rcnn"]["conv"] / spp["conv"])
        assert report["cpu_time"][f"speedup_{suffix}"] == pytest.approx(report["rcnn"]["cpu"]["total"] / spp["cpu"]["total"])
    assert "| R-CNN |" in capsys.readouterr().out

    # a folder of images, R-CNN on fewer of them
    assert main(["benchmark", "--images", str(voc / "JPEGImages"), "--num-images", "2", "--rcnn-images", "1",
                 "--json", str(out), *tiny]) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["rcnn_images"] == 1 and report["rcnn"]["images"] == 1
