"""`sppnet benchmark`: the helpers, and the command end to end on a tiny generated set."""
import json

import numpy as np
import pytest
import torch

from detection.core.config import SPPConfig
from detection.data.demo import make_demo_dataset
from detection.detector import Detector
from detection.runs.benchmark import (MODES, STEPS, BenchmarkError, benchmark_windows, calibrated, mode_detector,
                                     one_scale_row, run_mode)
from detection.runs.benchmark_report import format_report, speedups
from detection.runs.timing import Stopwatch, peak_memory, reset_peak_memory
from features.extractor import SPPFeatureExtractor, WindowFeatureExtractor
from features.rcnn import RCNNFeatureExtractor
from tools.cli import main


def test_benchmark_windows_are_the_first_p():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 5, 5], [2, 2, 8, 8]], float)
    assert (benchmark_windows(boxes, 7) == boxes).all() and (benchmark_windows(boxes, 2) == boxes[:2]).all()
    with pytest.raises(BenchmarkError, match="no windows"):
        benchmark_windows(np.zeros((0, 4)), 5)


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


def test_speedups_compare_r_cnn_with_spp_net_on_the_same_images():
    def row(conv, total, **extra):
        return {"conv": conv, "total": total, "cpu": {"conv": conv, "total": total}, **extra}

    # R-CNN ran on the first image only, which had more windows than the average of SPP-net's images
    report = {"rcnn": row(100.0, 101.0), "spp_1scale": row(1.0, 1.5, first=row(2.0, 2.5)), "spp_5scale": row(4.0, 5.0)}
    for clock in ("", "cpu"):
        ratios = speedups(report, clock)
        assert ratios["speedup_1scale"] == 101.0 / 2.5 and ratios["speedup_conv_1scale"] == 50.0
        assert ratios["overhead_1scale"] == 1.5  # total / conv over all of SPP-net's images
        assert ratios["speedup_5scale"] == 101.0 / 5.0 and ratios["speedup_conv_5scale"] == 25.0


def test_run_mode_also_times_the_first_images_alone(untrained):
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    few, many = np.array([[0, 0, 30, 30.0]]), np.array([[0, 0, 30, 30], [10, 5, 70, 60], [40, 20, 79, 63.0]])
    row = run_mode(untrained, [image, image], [few, many], warmup=0, recalibrate=False, pass_fraction=None, first=1)
    assert row["first"]["images"] == 1 and 0 < row["first"]["conv"] and 0 < row["first"]["cpu"]["total"]
    assert "first" not in run_mode(untrained, [image], [few], warmup=0, recalibrate=False, pass_fraction=None,
                                   first=1)


@pytest.fixture(scope="module")
def untrained():
    config = SPPConfig().replace(features={"backbone": "zf5", "scales": (64,), "rcnn_batch_size": 3})
    return Detector.untrained(config, ("a", "b"), "cpu", seed=1)


def test_untrained_detector_and_its_variants_share_weights_not_settings(untrained):
    assert untrained.config.svm.feature_layer == "pool5" and untrained.svm_weights.shape[0] == 2
    assert (untrained.svm_bias == 0).all() and untrained.regressor.coef_.shape[0] == 2
    assert torch.equal(Detector.untrained(untrained.config, ("a", "b"), "cpu", seed=1).svm_weights,
                       untrained.svm_weights)  # seeded
    rcnn = mode_detector(untrained, "rcnn", (96,), None)
    assert isinstance(rcnn.extractor, RCNNFeatureExtractor) and isinstance(untrained.extractor, SPPFeatureExtractor)
    assert rcnn.config.features.scales == (96,) and untrained.config.features.scales == (64,)
    assert rcnn.backbone is untrained.backbone and rcnn.regressor is untrained.regressor
    assert torch.equal(rcnn.svm_weights, untrained.svm_weights)
    for extractor in (rcnn.extractor, untrained.extractor):
        assert isinstance(extractor, WindowFeatureExtractor)
    rescored = untrained.replace(feature_scale=2.0, svm_bias=np.array([1.0, -1.0]))
    assert rescored.feature_scale == 2.0 and rescored.svm_bias.tolist() == [1.0, -1.0]
    assert untrained.feature_scale == 1.0 and (untrained.svm_bias == 0).all()


def test_calibrated_sets_the_norm_and_the_pass_fraction_on_a_copy(untrained):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    big = untrained.replace(features={"scales": (256,)})  # a 16 x 20 map: windows on distinct cells
    corners = rng.uniform(0, [79, 63], (40, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    tuned = calibrated(big, image, boxes, pass_fraction=0.25)
    features = tuned.features(tuned.compute_maps(image), boxes, image.shape[:2])
    assert float((features.svm * tuned.feature_scale).norm(dim=1).mean()) == pytest.approx(20.0, rel=1e-4)
    passing = (tuned.score(features) > tuned.config.test.score_threshold).float().mean(dim=0)
    assert passing.tolist() == pytest.approx([0.25, 0.25], abs=0.03)
    assert big.feature_scale == 1.0 and (big.svm_bias == 0).all()


def test_rcnn_progress_bar_counts_windows_batch_by_batch(untrained, capsys):
    rcnn = mode_detector(untrained, "rcnn", (64,), None)
    image = np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, 30, 30], [10, 5, 70, 60], [40, 20, 79, 63.0]])
    boxes = np.concatenate([boxes, boxes + 1, boxes[:1] + 2, boxes[:2]])  # 7 distinct boxes, then 2 repeats
    row = run_mode(rcnn, [image, image], [boxes, boxes], warmup=0, recalibrate=False, pass_fraction=None,
                   label="rcnn", progress=True)
    assert row["images"] == 2 and row["conv"] > 0
    err = capsys.readouterr().err
    # 2 images × 7 distinct windows (a repeated box is cropped once), in batches of 3
    assert "rcnn" in err and "14/14" in err and "win" in err


def test_benchmark_takes_only_test_time_options(tmp_path, capsys):
    assert main(["benchmark", "--images", str(tmp_path), "--set", "svm.C=1"]) == 2
    assert "--set svm.C" in capsys.readouterr().err
    assert main(["benchmark", "--images", str(tmp_path), "--set", "test.head_precision=bf16"]) == 2
    assert "--set test.head_precision: needs --model" in capsys.readouterr().err


def test_benchmark_times_a_one_scale_model_at_its_own_scale(tmp_path):
    voc = make_demo_dataset(tmp_path / "data", num_trainval=1, num_test=1, seed=2)
    model = tmp_path / "model.pt"
    Detector.untrained(SPPConfig().replace(features={"scales": (144,)}), ("a", "b"), "cpu").save(model)
    assert main(["benchmark", "--model", str(model), "--data", str(voc), "--split", "test", "--num-images", "1",
                 "--max-proposals", "4", "--rcnn-batch-size", "4", "--scales", "120,160", "--device", "cpu",
                 "--threads", "1", "--quiet", "--json", str(tmp_path / "bench.json")]) == 0
    assert json.loads((tmp_path / "bench.json").read_text())["spp_1scale"]["scales"] == [144]
    assert one_scale_row((120, 200)) == 688  # a multi-scale model: the paper's single scale (the flag: test below)


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
