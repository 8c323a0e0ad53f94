"""Detections drawn on images and precision-recall charts."""
import numpy as np
import pytest
from PIL import Image

from detection.core.detections import Detections
from detection.visualize import (
    PALETTE, class_colour, draw_detections, pr_chart, save_pr_curves, save_visualization, text_colour,
)


def test_class_colours_are_distinct_stable_and_never_run_out():
    colours = [class_colour(k) for k in range(60)]
    assert len(set(colours)) == 60
    assert colours[:len(PALETTE)] == list(PALETTE) and class_colour(3) == colours[3]
    assert all(0 <= c <= 255 for colour in colours for c in colour)
    assert text_colour((255, 225, 25)) == (0, 0, 0) and text_colour((0, 0, 128)) == (255, 255, 255)


def test_draw_detections_boxes_tags_and_input_untouched():
    image = np.full((120, 160, 3), 128, np.uint8)
    dets = Detections(np.array([[20.0, 30, 80, 100], [0, 0, 50, 40]]), np.array([0.9, 0.3]), np.array([0, 3]))
    drawn = draw_detections(image, dets, ("circle", "cross", "square", "star"))
    assert (image == 128).all() and drawn.shape == image.shape and drawn.dtype == np.uint8
    assert tuple(drawn[70, 80]) == class_colour(0)  # right edge of the first box
    assert tuple(drawn[100, 50]) == class_colour(0)  # bottom edge
    assert (drawn[60, 40] == 128).all()  # inside the box, nothing drawn
    # the first box's tag sits above it; the second box touches the top, so its tag goes inside
    assert (drawn[14:28, 22:60] != 128).any()
    assert (drawn[3:14, 3:30] != 128).any()


def test_drawn_images_keep_their_format(tmp_path):
    image = np.zeros((40, 50, 3), np.uint8)
    dets = Detections(np.array([[5.0, 5, 30, 30]]), np.array([1.5]), np.array([0]))
    for name in ("a.jpg", "b.png", "c.webp", "d.bmp", "e.tiff", "sub/f.JPEG"):
        save_visualization(tmp_path / name, image, dets, ("thing",))
        with Image.open(tmp_path / name) as written:
            assert written.size == (50, 40)


def test_pr_charts_per_class_and_together(tmp_path):
    recall = np.array([0.25, 0.5, 0.5, 0.75])
    precision = np.array([1.0, 1.0, 2 / 3, 0.75])
    curves = {"cat": (0.8, recall, precision), "dog": (0.0, np.zeros(0), np.zeros(0)),
              "bird/fish": (0.0, np.full(2, np.nan), np.zeros(2))}
    paths = save_pr_curves(curves, tmp_path, "voc07")
    assert [p.name for p in paths] == ["pr_cat.png", "pr_dog.png", "pr_bird_fish.png", "pr_all.png"]
    chart = np.asarray(Image.open(paths[0]).convert("RGB"))
    assert chart.shape == (540, 720, 3)
    assert (np.abs(chart.astype(int) - class_colour(0)).sum(axis=2) < 30).sum() > 200  # the curve is there
    single = pr_chart([("cat", recall, precision, (230, 25, 75))], "cat")
    assert not np.array_equal(single, pr_chart([("cat", recall[:1], precision[:1], (230, 25, 75))], "cat"))


@pytest.mark.parametrize("size", [(12, 9), (2000, 1500)])
def test_text_and_lines_scale_with_the_image(size):
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    dets = Detections(np.array([[0.0, 0, width - 1, height - 1]]), np.array([0.5]), np.array([1]))
    drawn = draw_detections(image, dets, ("a", "b"))
    assert drawn.shape == image.shape and drawn.any()
