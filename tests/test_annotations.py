"""Annotations are checked, not trusted: class names, boxes, image sizes, splits (issue 9 §2).

Each case as the library raises or reports it, and as the command line shows it (docs/bad-inputs.md).
"""
import numpy as np
import pytest
from PIL import Image

from detection.core.images import image_size, load_image
from detection.data.records import DatasetError
from detection.data.voc import VOC_CLASSES, VOCDataset
from tools.cli import main

SIZE = (60, 40)


def write_voc(root, objects_by_image, split="trainval", size=SIZE, image_sizes=None):
    """VOC layout; objects are (name, (xmin, ymin, xmax, ymax)) 1-based; ``image_sizes`` overrides the JPEGs' sizes."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for image_id, objects in objects_by_image.items():
        Image.new("RGB", (image_sizes or {}).get(image_id, size)).save(root / "JPEGImages" / f"{image_id}.jpg")
        objs = "".join(
            f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>{objs}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in objects_by_image))
    return root


def one_line_error(capsys, *names):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)
    return err


# ---------------------------------------------------------------- class names

def test_a_stray_name_in_voc_data_is_an_error_naming_file_and_name(tmp_path, capsys):
    write_voc(tmp_path, {"a": [("dog", (1, 1, 9, 9))], "b": [("dinosaur", (1, 1, 9, 9)), ("cat", (2, 2, 9, 9))]})
    with pytest.raises(DatasetError, match=r"b\.xml: class 'dinosaur' is not one of the 20 VOC classes.*"
                                           r"--classes cat,dinosaur,dog"):
        VOCDataset(tmp_path, "trainval")
    # --classes says which classes: the others are ignored, and counted
    dataset = VOCDataset(tmp_path, "trainval", classes=VOC_CLASSES)
    assert dataset.classes == VOC_CLASSES and dataset.ignored_objects == 1
    assert [VOC_CLASSES[k] for k in dataset[1].labels] == ["cat"]
    assert main(["eval", "--data", str(tmp_path), "--split", "trainval", "--results", str(tmp_path)]) == 2
    one_line_error(capsys, "b.xml", "dinosaur")


def test_a_misspelt_class_is_an_error_with_or_without_a_class_list(tmp_path, capsys):
    write_voc(tmp_path, {"a": [("cross", (1, 1, 9, 9))], "b": [("cross", (1, 1, 9, 9))],
                         "c": [("Cross ", (1, 1, 9, 9))]})
    with pytest.raises(DatasetError, match=r"c\.xml: class 'Cross' is spelt differently from the class 'cross'"):
        VOCDataset(tmp_path, "trainval")
    with pytest.raises(DatasetError, match=r"c\.xml: class 'Cross'"):
        VOCDataset(tmp_path, "trainval", classes=("cross", "star"))
    assert main(["train", "--data", str(tmp_path), "--work-dir", str(tmp_path / "w")]) == 2
    one_line_error(capsys, "c.xml", "'Cross'")
    # a truly other class is ignored when a list is given
    write_voc(tmp_path, {"c": [("circle", (1, 1, 9, 9))]}, split="other")
    assert VOCDataset(tmp_path, "other", classes=("cross",)).ignored_objects == 1


# ---------------------------------------------------------------- boxes

def test_boxes_partly_outside_are_clipped_and_counted(tmp_path, capsys):
    # 1-based: xmin 0 is off-spec (one column left of the image), xmax 70 is 10 columns right of 60
    write_voc(tmp_path, {"a": [("dog", (0, 5, 30, 39)), ("dog", (50, 30, 70, 45)), ("dog", (2, 2, 9, 9))]})
    dataset = VOCDataset(tmp_path, "trainval")
    np.testing.assert_array_equal(dataset[0].boxes, [[0, 4, 29, 38], [49, 29, 59, 39], [1, 1, 8, 8]])
    assert dataset.clipped_boxes == 2 and not dataset.skipped_boxes
    assert "3 boxes; 2 clipped to their image" in dataset.summary()
    assert main(["eval", "--data", str(tmp_path), "--split", "trainval", "--results", str(tmp_path / "r")]) == 2
    assert "2 clipped to their image" in capsys.readouterr().out  # the summary line comes before the error


def test_empty_inverted_and_outside_boxes_are_skipped_with_a_warning(tmp_path, capsys):
    write_voc(tmp_path, {"a": [("dog", (5, 5, 20, 20)), ("cat", (30, 5, 10, 20)), ("dog", (61, 1, 80, 20)),
                               ("dog", (-20, 1, 0, 9))]})
    dataset = VOCDataset(tmp_path, "trainval")
    np.testing.assert_array_equal(dataset[0].boxes, [[4, 4, 19, 19]])
    assert [VOC_CLASSES[k] for k in dataset[0].labels] == ["dog"]
    assert dataset.skipped_boxes == [
        f"{tmp_path / 'Annotations' / 'a.xml'}: object 2 'cat' (xmin 30, ymin 5, xmax 10, ymax 20) has no pixels, "
        f"skipped",
        f"{tmp_path / 'Annotations' / 'a.xml'}: object 3 'dog' (xmin 61, ymin 1, xmax 80, ymax 20) lies outside the "
        f"60x40 image, skipped",
        f"{tmp_path / 'Annotations' / 'a.xml'}: object 4 'dog' (xmin -20, ymin 1, xmax 0, ymax 9) lies outside the "
        f"60x40 image, skipped"]
    assert dataset.clipped_boxes == 0
    (tmp_path / "comp4_det_trainval_dog.txt").write_text("a 0.9 5 5 20 20\n")
    assert main(["eval", "--data", str(tmp_path), "--split", "trainval", "--results", str(tmp_path),
                 "--classes", "dog,cat"]) == 0
    captured = capsys.readouterr()
    assert "3 skipped (empty, inverted or outside the image)" in captured.out
    warnings = captured.err.splitlines()
    assert len(warnings) == 3 and all(line.startswith("warning: ") and "a.xml: object" in line for line in warnings)


def test_a_non_finite_coordinate_is_a_malformed_annotation(tmp_path):
    write_voc(tmp_path, {"a": [("dog", (1, 1, "nan", 9))]})
    with pytest.raises(DatasetError, match=r"a\.xml: malformed annotation"):
        VOCDataset(tmp_path, "trainval")


# ---------------------------------------------------------------- image sizes

def test_the_image_size_must_be_the_annotations(tmp_path, capsys):
    write_voc(tmp_path, {"a": [], "b": []}, image_sizes={"b": (120, 80)})  # b resized after labelling
    with pytest.raises(DatasetError, match=r"b\.xml: the annotation is for a 60x40 image, but .*b\.jpg is 120x80"):
        VOCDataset(tmp_path, "trainval")
    assert main(["eval", "--data", str(tmp_path), "--split", "trainval", "--results", str(tmp_path)]) == 2
    one_line_error(capsys, "b.xml", "b.jpg")
    # the images are not needed to evaluate: a missing one is not checked (reading it fails later)
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    assert len(VOCDataset(tmp_path, "trainval")) == 2


def test_the_size_is_the_upright_size_load_image_decodes(tmp_path):
    write_voc(tmp_path, {"a": []}, size=(10, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20 wide and 10 high, shown turned by 90°
    Image.new("RGB", (20, 10)).save(tmp_path / "JPEGImages" / "a.jpg", exif=exif)
    assert image_size(tmp_path / "JPEGImages" / "a.jpg") == (10, 20) == load_image(tmp_path / "JPEGImages" / "a.jpg").shape[1::-1]
    assert VOCDataset(tmp_path, "trainval")[0].width == 10
    # a PNG's EXIF chunk after the pixels is not in the header: the image is decoded before any error
    png = tmp_path / "JPEGImages" / "a.png"
    Image.new("RGB", (20, 10)).save(png, exif=exif)
    png.write_bytes(exif_after_pixels(png.read_bytes()))
    (tmp_path / "JPEGImages" / "a.jpg").unlink()
    assert image_size(png) == (20, 10) and load_image(png).shape[1::-1] == (10, 20)
    assert VOCDataset(tmp_path, "trainval")[0].path.name == "a.png"


def exif_after_pixels(png: bytes) -> bytes:
    """The PNG with its eXIf chunk moved to just before IEND (allowed by the PNG spec before 2022)."""
    chunks, at = [], 8
    while at < len(png):
        length = int.from_bytes(png[at:at + 4], "big")
        chunks.append(png[at:at + 12 + length])
        at += 12 + length
    exif = [c for c in chunks if c[4:8] == b"eXIf"]
    rest = [c for c in chunks if c[4:8] != b"eXIf"]
    assert len(exif) == 1
    return png[:8] + b"".join(rest[:-1] + exif + rest[-1:])


# ---------------------------------------------------------------- splits

def test_a_malformed_annotation_outside_the_split_does_not_block(tmp_path):
    write_voc(tmp_path, {"a": [("zebra", (1, 1, 9, 9))], "b": [("apple", (1, 1, 9, 9))]})
    (tmp_path / "Annotations" / "c.xml").write_text("<annotation><size>")  # an image of no split read here
    (tmp_path / "Annotations" / "d.xml").write_text(  # nor this one, with a name outside the classes
        "<annotation><size><width>60</width><height>40</height></size><object><name>Apple</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    assert VOCDataset(tmp_path, "trainval").classes == ("apple", "zebra")
    # inside the split it is an error naming the file
    (tmp_path / "ImageSets" / "Main" / "all.txt").write_text("a\nb\nc\n")
    with pytest.raises(DatasetError, match=r"c\.xml: malformed VOC annotation"):
        VOCDataset(tmp_path, "all")


def test_an_empty_split_is_an_error_when_the_data_set_is_made(tmp_path, capsys):
    write_voc(tmp_path, {"a": [("dog", (1, 1, 9, 9))]})
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(DatasetError, match=r"test\.txt: split 'test' has no images"):
        VOCDataset(tmp_path, "test")
    assert main(["train", "--data", str(tmp_path), "--split", "test", "--work-dir", str(tmp_path / "w")]) == 2
    one_line_error(capsys, "test.txt", "no images")
    assert not (tmp_path / "w").exists()  # nothing started


def test_an_image_listed_twice_in_a_split_is_an_error(tmp_path):
    write_voc(tmp_path, {"a": [("dog", (1, 1, 9, 9))], "b": []})
    (tmp_path / "ImageSets" / "Main" / "trainval.txt").write_text("a\nb\na\n")
    with pytest.raises(DatasetError, match=r"trainval\.txt: image 'a' is listed more than once"):
        VOCDataset(tmp_path, "trainval")
