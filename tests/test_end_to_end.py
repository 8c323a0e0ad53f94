"""The whole pipeline through the `sppnet` command: demo (generate → train → test), test, eval, detect."""
import json

import pytest

from tools.cli import main

pytestmark = pytest.mark.slow

SMALL = ["--max-proposals", "300", "--workers", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--num-images", "16", *SMALL]) == 0
    return out


def test_demo_trains_and_beats_chance(demo_run, capsys):
    metrics = json.loads((demo_run / "test" / "metrics.json").read_text())
    assert metrics["metric"] == "voc07"
    assert set(metrics["ap"]) == {"circle", "cross", "square", "star", "triangle"}
    # a detector scoring windows at random gets an AP of a few percent here
    assert metrics["mAP"] > 0.3
    results = sorted(p.name for p in (demo_run / "test" / "results").iterdir())
    assert results == [f"comp4_det_test_{c}.txt" for c in sorted(metrics["ap"])]


def test_eval_of_written_results_reproduces_test_metrics(demo_run, tmp_path):
    voc = demo_run / "data" / "VOC2007"
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--data", str(voc), "--split", "test", "--results", str(demo_run / "test" / "results"),
                 "--json", str(out_json)]) == 0
    again = json.loads(out_json.read_text())
    tested = json.loads((demo_run / "test" / "metrics.json").read_text())
    # `sppnet test` scores the result files it writes (rounded as written), through the same code
    assert again == tested


def test_test_command_reuses_the_cache_and_writes_the_same_metrics(demo_run, tmp_path, monkeypatch):
    import proposals.store as store

    def no_selective_search(*args, **kwargs):
        raise AssertionError("selective search ran although every image's proposals were cached")

    monkeypatch.setattr(store, "selective_search", no_selective_search)
    out = tmp_path / "retest"
    code = main(["test", "--data", str(demo_run / "data"), "--model", str(demo_run / "train" / "model.pt"),
                 "--out", str(out), "--cache-dir", str(demo_run / "train" / "cache"), "--workers", "1", "--quiet",
                 "--device", "cpu"])
    assert code == 0
    assert json.loads((out / "metrics.json").read_text())["mAP"] == pytest.approx(
        json.loads((demo_run / "test" / "metrics.json").read_text())["mAP"], abs=1e-9)


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["test", "--data", str(tmp_path), "--model", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.pt" in err
