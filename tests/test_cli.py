"""The `sppnet` command line: help and usage errors without torch, help text on every option,
every option checked before any work starts (one line, exit 2), --config/--set and their precedence."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detection.core.config import ConfigError, SPPConfig, read_config_file
from tools.cli import COMMANDS, build_parser, main, version
from tools.common import config_from_args

ROOT = Path(__file__).resolve().parents[1]


def _run_in_fresh_python(argvs):
    """Run main() on each argv in one new interpreter; per argv: (exit code, torch imported by then)."""
    script = (
        "import json, sys\n"
        "from tools.cli import main\n"
        "results = []\n"
        f"for argv in {argvs!r}:\n"
        "    try:\n"
        "        code = main(argv)\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        "    results.append([code, 'torch' in sys.modules])\n"
        "print('RESULTS', json.dumps(results))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")][-1]
    return json.loads(line.removeprefix("RESULTS ")), done.stderr


def test_help_version_and_usage_errors_do_not_import_torch(tmp_path):
    work, model = str(tmp_path / "work"), str(tmp_path / "model.pt")
    argvs = [["--help"], ["--version"], *[[name, "--help"] for name in COMMANDS],
             ["train", "--data", str(tmp_path), "--work-dir", work, "--svm-c", "-1"],
             ["train", "--data", str(tmp_path), "--work-dir", work, "--set", "svm.CC=1"],
             ["train", "--data", str(tmp_path), "--work-dir", work, "--no-such-flag"],
             ["demo", "--pyramid", "0,-1"],
             ["test", "--data", str(tmp_path), "--model", model, "--out", work, "--set", "svm.C=1"],
             ["detect", "x.jpg", "--model", model, "--out", work, "--topk", "-1"]]
    results, stderr = _run_in_fresh_python(argvs)
    codes = [code for code, _ in results]
    assert codes == [0, 0, *[0] * len(COMMANDS), 2, 2, 2, 2, 2, 2], stderr
    assert not any(torch_loaded for _, torch_loaded in results), stderr
    assert not Path(work).exists()


def _parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_has_help_text_and_no_markup():
    for parser in _parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help and action.help.strip(), f"{parser.prog} {'/'.join(action.option_strings)}"
        text = parser.format_help()
        for markup in ("``", ":func:", ":class:", ":meth:", ":mod:"):
            assert markup not in text, f"{parser.prog}: {markup}"


def test_version_comes_from_the_package_metadata(capsys):
    from importlib import metadata

    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"sppnet {metadata.version('sppnet')}" == f"sppnet {version()}"


@pytest.mark.parametrize("flags, message", [
    (["--pyramid", "0,-1"], "--pyramid: must be a non-empty list of integers >= 1, got 0,-1"),
    (["--svm-c", "-1"], "--svm-c: must be > 0, got -1"),
    (["--finetune-checkpoint-every", "0"], "--finetune-checkpoint-every: must be >= 1, got 0"),
    (["--max-proposals", "-5"], "--max-proposals: must be >= 1, got -5"),
    (["--bbox-min-overlap", "nan"], "--bbox-min-overlap: must be a finite number, got nan"),
    (["--set", "svm.C=0"], "--set svm.C: must be > 0, got 0"),
    (["--set", "test.nms=0.4"], "--set test.nms: unknown option (did you mean test.nms_iou?); test has "
                                "scoring, score_threshold, detect_min_probability, softmax_threshold, nms_iou, "
                                "max_per_class, max_per_image, fc6_svd_rank, fc7_svd_rank, head_precision"),
    (["--set", "finetune.iterations=many"], "--set finetune.iterations: must be an integer, got 'many'"),
    (["--set", "svm.C"], "--set: expected KEY=VALUE such as svm.C=0.002, got 'svm.C'"),
])
def test_a_bad_option_is_one_line_and_exit_2_before_any_work(tmp_path, capsys, flags, message):
    work = tmp_path / "work"
    assert main(["train", "--data", str(tmp_path / "no-data"), "--work-dir", str(work), *flags]) == 2
    assert capsys.readouterr().err == f"sppnet train: error: {message}\n"
    assert not work.exists()


@pytest.mark.parametrize("flags, message", [
    (["--topk", "-1"], "argument --topk: must be >= 1, got -1"),
    (["--score-thresh", "nan"], "argument --score-thresh: must be a finite number, got 'nan'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
])
def test_detect_filters_are_checked_by_the_parser(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as caught:
        main(["detect", str(tmp_path), "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "o"), *flags])
    assert caught.value.code == 2 and message in capsys.readouterr().err


def test_cuda_on_a_machine_without_it_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    work = tmp_path / "work"
    assert main(["train", "--data", str(tmp_path), "--work-dir", str(work), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sppnet train: error: device 'cuda' requested but ") and err.count("\n") == 1
    assert not work.exists()


def _config(*argv):
    return config_from_args(build_parser().parse_args(list(argv)))


def test_precedence_defaults_file_flags_set(tmp_path):
    file = tmp_path / "my.yaml"
    file.write_text("svm:\n  C: 0.01\ntest.nms_iou: 0.5\nfinetune:\n  hidden: 64\n")
    train = ["train", "--data", "d", "--work-dir", "w"]
    assert _config(*train).svm.C == SPPConfig().svm.C
    assert _config(*train, "--config", str(file)).svm.C == 0.01
    assert _config(*train, "--config", str(file), "--svm-c", "0.02").svm.C == 0.02
    both = _config(*train, "--config", str(file), "--svm-c", "0.02", "--set", "svm.C=0.03", "test.max_per_image=7")
    assert (both.svm.C, both.test.nms_iou, both.test.max_per_image, both.finetune.hidden) == (0.03, 0.5, 7, 64)
    # a preset is the bottom layer: the demo's narrower head, unless the file or a flag says otherwise
    assert _config("demo").finetune.hidden == SPPConfig.preset("demo").finetune.hidden == 512
    assert _config("demo", "--config", str(file)).finetune.hidden == 64
    assert _config("demo", "--config", str(file), "--finetune-hidden", "128").finetune.hidden == 128
    demo_help = next(p for p in _parsers(build_parser()) if p.prog == "sppnet demo").format_help()
    assert ("fc6/fc7 width; unset: a pretrained head's own (4096), else 512 for fresh layers (the paper's 4096) "
            "(default: 512)") in " ".join(demo_help.split())


def test_a_bad_option_in_a_config_file_names_the_file_and_key(tmp_path, capsys):
    file = tmp_path / "my.yaml"
    file.write_text("proposals:\n  max_proposals: -5\n")
    with pytest.raises(ConfigError, match=r"my\.yaml: proposals\.max_proposals: must be >= 1, got -5$"):
        _config("train", "--data", "d", "--work-dir", "w", "--config", str(file))
    # a flag over it wins, and then the file's value is never used
    assert _config("train", "--data", "d", "--work-dir", "w", "--config", str(file),
                   "--max-proposals", "9").proposals.max_proposals == 9
    assert main(["train", "--data", "d", "--work-dir", str(tmp_path / "w"), "--config", str(tmp_path / "no.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sppnet train: error: {tmp_path / 'no.yaml'}: cannot read the config file")


@pytest.mark.slow
def test_train_writes_the_resolved_config_which_config_reads_back(tmp_path):
    from detection.data.demo import make_demo_dataset

    voc = make_demo_dataset(tmp_path / "data", num_trainval=2, num_test=1, seed=1, image_size=(160, 120))
    work = tmp_path / "work"
    assert main(["train", "--data", str(voc), "--work-dir", str(work), "--stages", "proposals",
                 "--proposal-width", "160", "--set", "proposals.max_proposals=30", "test.nms_iou=0.4",
                 "--device", "cpu", "--workers", "1", "--quiet"]) == 0
    written = SPPConfig().override(read_config_file(work / "config.yaml"))
    assert written == SPPConfig().override({"proposals.resize_width": 160, "proposals.max_proposals": 30,
                                            "test.nms_iou": 0.4})
    assert _config("train", "--data", "d", "--work-dir", "w", "--config", str(work / "config.yaml")) == written
    # a cache shared between runs: a second work dir reads the proposals from it instead of its own
    shared, second = tmp_path / "shared-cache", tmp_path / "second"
    common = ["--stages", "proposals", "--proposal-width", "160", "--set", "proposals.max_proposals=30",
              "--device", "cpu", "--workers", "1", "--quiet"]
    assert main(["train", "--data", str(voc), "--work-dir", str(second), "--cache-dir", str(shared), *common]) == 0
    assert any(shared.rglob("*")) and not (second / "cache").exists()
    assert main(["train", "--data", str(voc), "--work-dir", str(tmp_path / "third"), "--cache-dir", str(shared),
                 *common]) == 0
    assert "stage proposals: up to date, skipped" in (tmp_path / "third" / "train.log").read_text()


@pytest.mark.slow
def test_detect_set_changes_the_models_test_options_and_is_part_of_the_run(tmp_path, untrained_model, capsys):
    from detection.data.demo import make_demo_dataset

    voc = make_demo_dataset(tmp_path / "data", num_trainval=1, num_test=1, seed=3, image_size=(160, 120))
    image, out = str(voc / "JPEGImages" / "000001.jpg"), tmp_path / "out"
    common = ["--model", str(untrained_model), "--out", str(out), "--device", "cpu", "--workers", "0", "--quiet"]
    assert main(["detect", image, *common, "--set", "test.max_per_image=3"]) == 0
    record = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert len(record["detections"]) == 3
    capsys.readouterr()
    assert main(["detect", image, *common, "--set", "test.max_per_image=4"]) == 2
    assert "made by a run with other settings (set)" in capsys.readouterr().err


def test_every_sppnet_command_in_the_readme_parses():
    """The README's examples are what users copy: each `sppnet ...` line must be a valid command line."""
    import re
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", readme, re.S)
             for line in block.splitlines()]
    commands = [re.sub(r"\[[^\]]*\]", "", line) for line in lines if line.startswith("sppnet ")]
    assert len(commands) >= 15
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit as stopped:
            pytest.fail(f"README: `{command}` does not parse (exit {stopped.code})")


def test_recall_compares_each_mode_with_each_min_size(tmp_path, write_voc, capsys):
    voc = write_voc(tmp_path / "voc", {"000001": [("a", (5, 5, 40, 30))]}, size=(64, 48))
    flags = ["recall", "--data", str(voc), "--num-images", "1", "--proposal-width", "0"]
    assert main([*flags, "--modes", "rcnn_fast,opencv_fast", "--min-proposal-size", "30,8"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "fast" in line]
    assert [row.split(" | ")[:2] for row in rows] == [["| rcnn_fast", "30"], ["| rcnn_fast", "8"],
                                                      ["| opencv_fast", "30"], ["| opencv_fast", "8"]]
    with pytest.raises(SystemExit) as exit_info:
        main([*flags, "--min-proposal-size", "0,8"])
    assert exit_info.value.code == 2
    assert "sizes must be >= 1" in capsys.readouterr().err
