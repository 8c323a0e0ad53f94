"""`sppnet ablation`: every row of the table measured and written into the results file, between
markers that a rerun replaces, leaving hand-written text alone."""
import pytest

from detection.runs.ablation import (
    GENERATED_SETS,
    ROWS,
    AblationColumn,
    CellResult,
    ColumnResult,
    GeneratedSet,
    size_table,
    write_markdown_section,
)
from tools.cli import build_parser, main


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
    sizes = text[text.index("| features | 1-scale small ("):].split("\n\n")[0].splitlines()
    assert [line.split("|")[1].strip() for line in sizes[2:]] == [row.name for row in ROWS]
    assert all(len(line.split("|")) == 6 for line in sizes)  # features, small, medium, large


def test_size_table_groups_sizes_under_each_column():
    def cell(row, column, small, medium):
        return CellResult(row, column, "pool5", {}, 0.0, {}, 0.0, by_size={
            "all": {"mAP": 0.5, "objects": 3}, "small": {"mAP": small, "objects": 1},
            "medium": {"mAP": medium, "objects": 2}, "large": {"mAP": None, "objects": 0}})

    one = ColumnResult(AblationColumn("1-scale", (688,)), 2, 2, 0.0, [cell("pool5", "1-scale", 0.25, 0.5)])
    five = ColumnResult(AblationColumn("5-scale", (480,)), 2, 2, 0.0, [cell("pool5", "5-scale", 1.0, 0.75),
                                                                      cell("fc6", "5-scale", 0.0, 0.125)])
    lines = size_table([one, five]).splitlines()
    assert lines[0] == ("| features | 1-scale small (1) | 1-scale medium (2) | 1-scale large (0) | "
                        "5-scale small (1) | 5-scale medium (2) | 5-scale large (0) |")
    assert lines[2] == "| pool5 | 25.0 | 50.0 | – | 100.0 | 75.0 | – |"
    assert lines[3] == "| fc6 | – | – | – | 0.0 | 12.5 | – |"


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



def test_dataset_choices_are_the_generated_sets():
    args = build_parser().parse_args(["ablation", "--dataset", "realistic"])
    assert args.dataset == "realistic" and args.num_images is None and args.image_size is None
    ablation_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["ablation"]
    choices = next(a.choices for a in ablation_parser._actions if a.dest == "dataset")
    assert tuple(choices) == tuple(sorted(GENERATED_SETS))
    assert GENERATED_SETS["realistic"].image_size == (500, 375) and GENERATED_SETS["realistic"].num_images == 150
    assert GENERATED_SETS["realistic-small"].options == (("max_extent", 96),)
    assert len({hash(g) for g in GENERATED_SETS.values()}) == len(GENERATED_SETS)  # frozen, hashable


def test_generated_set_passes_its_options_and_names_the_call(tmp_path):
    calls = []

    def make(root, **kwargs):
        calls.append((root, kwargs))
        return root / "VOC2007"

    generated = GeneratedSet("Small", make, ("a",), (500, 375), 150, (("max_extent", 96),))
    voc, made_by = generated.generate(tmp_path, 3, 2, (400, 300))
    assert voc == tmp_path / "VOC2007"
    assert calls == [(tmp_path, {"num_trainval": 3, "num_test": 3, "seed": 2, "image_size": (400, 300), "max_extent": 96})]
    assert made_by == "`make(num_trainval=3, num_test=3, seed=2, image_size=(400, 300), max_extent=96)`"
