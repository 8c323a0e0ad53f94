"""`sppnet ablation`: every row of the table measured and written into the results file, between
markers that a rerun replaces, leaving hand-written text alone."""
import builtins

import pytest

from detection.runs.ablation import ROWS, write_markdown_section
from tools.cli import main


def test_markdown_section_is_replaced_in_place_and_text_around_it_kept(tmp_path):
    doc = tmp_path / "results.md"
    write_markdown_section(doc, "a", "first", header="# Results")
    doc.write_text(doc.read_text() + "\nDiscussion by hand.\n")
    write_markdown_section(doc, "b", "other set", header="# Results")
    write_markdown_section(doc, "a", "second", header="# Results")
    text = doc.read_text()
    assert text.startswith("# Results") and "Discussion by hand." in text and "other set" in text
    assert "second" in text and "first" not in text and text.count("ablation a: begin") == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:classes .* have no positives:RuntimeWarning")
def test_ablation_command_writes_every_row(tmp_path, capsys):
    doc = tmp_path / "results.md"
    args = ["ablation", "--out", str(tmp_path / "out"), "--num-images", "2", "--image-size", "160x120",
            "--columns", "1", "--max-proposals", "40", "--proposal-width", "160", "--finetune-iterations", "10",
            "--finetune-hidden", "16", "--doc", str(doc), "--quiet", "--device", "cpu", "--workers", "1"]
    assert main(args) == 0
    text = doc.read_text()
    table = text[text.index("| features |"):].split("\n\n")[0].splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == [row.name for row in ROWS]
    assert all(float(line.split("|")[2]) >= 0 for line in table[2:])
    for needle in ("machine:", "date:", "command:", "fine-tuning", "| SVMs on ftfc7 |", "| test ftfc7 + bb"):
        assert needle in text
    assert capsys.readouterr().out.count("mAP") == len(ROWS)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:classes .* have no positives:RuntimeWarning")
def test_ablation_on_the_realistic_set(tmp_path):
    doc = tmp_path / "results.md"
    common = ["--columns", "1", "--max-proposals", "40", "--proposal-width", "160", "--finetune-iterations", "5",
              "--finetune-hidden", "16", "--doc", str(doc), "--quiet", "--device", "cpu", "--workers", "1",
              "--num-images", "2", "--out", str(tmp_path / "out")]
    assert main(["ablation", "--dataset", "realistic", "--image-size", "200x160"] + common) == 0
    text = doc.read_text()
    assert "ablation realistic-2-200x160-seed0: begin" in text
    section = text[text.index("### Realistic set: 2 + 2 generated images (200×160, seed 0)"):]
    assert "`make_realistic_dataset(num_trainval=2, num_test=2, seed=0, image_size=(200, 160))`" in section
    assert "| ftfc7 + bb |" in section
    assert (tmp_path / "out" / "realistic-2-200x160-seed0" / "data" / "realistic_dataset.json").is_file()


def test_realistic_without_scikit_image_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name == "skimage" or name.startswith("skimage."):
            raise ImportError("No module named 'skimage'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    code = main(["ablation", "--dataset", "realistic", "--out", str(tmp_path), "--doc", str(tmp_path / "r.md")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs scikit-image: pip install 'sppnet[realistic]'" in err
