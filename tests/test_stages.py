"""Training stages: skipping what is up to date, recomputing what an input change affects, missing
upstream outputs, and every feature layer (and multi-scale choices) trained and tested end to end."""
import numpy as np
import pytest
import torch

from detection.core.config import SPPConfig
from detection.core.detections import ClassDetections
from detection.data.demo import make_demo_dataset
from detection.detector import Detector
from detection.runs.test import record_maps, test_model
from detection.core.config import STAGES, ConfigError, parse_stages
from detection.training.stages import StageError
from detection.training.trainer import Trainer, TrainingError
from detection.data.voc import VOCDataset
from detection.evaluation.results import evaluate_results, read_results
from tools.cli import main

pytestmark = [pytest.mark.slow,
              # four tiny training images leave a class without positives now and then
              pytest.mark.filterwarnings("ignore:classes .* have no positives:RuntimeWarning")]

TINY = SPPConfig().replace(
    proposals={"max_proposals": 60, "resize_width": 160},
    features={"scales": (160,)},
    finetune={"hidden": 32, "iterations": 20, "checkpoint_every": 10},
)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages-data")
    return make_demo_dataset(root, num_trainval=4, num_test=3, seed=2, image_size=(160, 120))


@pytest.fixture(scope="module")
def first_run(voc, tmp_path_factory):
    """(work dir, cache dir, log lines) of a full TINY run; later tests reuse its cache."""
    root = tmp_path_factory.mktemp("stages")
    _, _, lines = train(TINY, voc, root / "first", root / "cache")
    return root / "first", root / "cache", lines


def train(config, voc, work_dir, cache_dir, stages=STAGES):
    lines = []
    trainer = Trainer(config, work_dir, device="cpu", progress=False, log=lines.append, cache_dir=cache_dir)
    detector = trainer.train(VOCDataset(voc, "trainval"), stages=stages)
    return detector, trainer, lines


def ran(lines):
    return [line.split(":")[0].removeprefix("stage ") for line in lines if line.endswith(": running")]


def shuffled_map(dataset, results, draws=20):
    """The mean mAP of the detections in ``results`` with their scores shuffled within each class:
    what scoring the same windows at random gets."""
    rng = np.random.default_rng(0)
    per_class = read_results(results, dataset)
    return np.mean([evaluate_results(dataset, [ClassDetections(c.image_ids, rng.permutation(c.scores), c.boxes)
                                               for c in per_class])["mAP"] for _ in range(draws)])


def test_parse_stages_orders_and_rejects_unknown():
    assert parse_stages("bbox,svm") == ("svm", "bbox")
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("svm,nope")


def test_rerun_skips_all_and_input_changes_recompute_exactly_downstream(voc, tmp_path, first_run):
    work_dir, cache, first = first_run
    assert ran(first) == list(STAGES)
    detector, trainer, second = train(TINY, voc, work_dir, cache)
    assert ran(second) == [] and trainer.timings == {}
    assert all(f"stage {s}: up to date, skipped" in second for s in STAGES)
    assert detector is not None and detector.head is not None and detector.regressor is not None

    _, _, lines = train(TINY.replace(bbox={"ridge_lambda": 4000.0}), voc, tmp_path / "lambda", cache)
    assert ran(lines) == ["bbox"]

    # a stage alone, from the others' cached outputs
    detector, _, lines = train(TINY.replace(svm={"C": 0.01}), voc, tmp_path / "c", cache, stages=("svm",))
    assert ran(lines) == ["svm"] and detector is not None

    _, _, lines = train(TINY.replace(proposals={"max_proposals": 40}), voc, tmp_path / "fewer", cache)
    # conv maps do not depend on the proposals; everything that reads proposals does
    assert ran(lines) == ["proposals", "finetune", "svm", "bbox"]
    assert "stage conv: up to date, skipped" in lines

    # the log file records each SVM retrain (positives, negatives, losses) and fine-tuning progress
    log = (work_dir / "train.log").read_text()
    assert "retrain after image" in log and "positives" in log and "loss" in log
    assert "finetune 20/20" in log


def test_a_stage_alone_needs_its_upstream_outputs(voc, tmp_path, capsys):
    with pytest.raises(StageError, match="stage svm needs the output of stage proposals"):
        train(TINY, voc, tmp_path / "w", tmp_path / "cache", stages=("svm",))
    code = main(["train", "--data", str(voc), "--work-dir", str(tmp_path / "w"), "--stages", "svm",
                 "--scales", "160", "--max-proposals", "60", "--quiet", "--device", "cpu", "--workers", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stage svm needs the output of stage proposals" in err


@pytest.mark.parametrize("layer, changes", [
    ("pool5", {}),
    ("fc6", {}),
    ("fc7", {}),
    ("ftfc7", {}),
    ("ftfc7+pool5", {}),
    ("ftfc6", {"features": {"scales": (128, 224), "scale_rule": "official", "projection": "official"},
               "finetune": {"scale_sampling": "chosen"}}),
])
def test_every_feature_layer_trains_and_tests_end_to_end(voc, tmp_path, first_run, layer, changes):
    config = TINY.replace(svm={"feature_layer": layer}, **changes)
    detector, trainer, _ = train(config, voc, tmp_path, first_run[1])
    test_set = VOCDataset(voc, "test", classes=detector.classes)
    metrics = test_model(detector, test_set, tmp_path / "test", trainer.cache, progress=False)
    if layer == "pool5":  # the layer without fine-tuning, which 20 iterations on 4 images cannot teach much
        assert metrics["mAP"] > 2 * shuffled_map(test_set, tmp_path / "test" / "results")

    width = {"pool5": detector.extractor.output_dim, "ftfc7+pool5": detector.extractor.output_dim + TINY.finetune.hidden
             }.get(layer, TINY.finetune.hidden)
    assert detector.svm_weights.shape == (len(detector.classes), width)
    assert (detector.head is None) == (layer == "pool5")
    # box regression reads pool5 with pool5's own scale (recipe §8)
    assert (detector.bbox_feature_scale == detector.feature_scale) == (layer == "pool5")

    loaded = Detector.load(tmp_path / "model.pt", device="cpu", cache=trainer.cache)
    assert test_model(loaded, test_set, tmp_path / "test2", trainer.cache, progress=False) == metrics
    maps, size = loaded.extractor.maps(test_set[0].image_id, None, trainer.cache.source(test_set[0].path))  # cached above
    boxes = np.array([[0, 0, 50, 40], [20, 10, 100, 90]], dtype=np.float64)
    a, b = detector.features(maps, boxes, size), loaded.features(maps, boxes, size)
    assert torch.equal(a.svm, b.svm) and torch.equal(a.pool5, b.pool5)


def test_softmax_scoring_skips_the_svms_and_scores_with_fc8(voc, tmp_path, first_run):
    config = TINY.replace(test={"scoring": "softmax"}, svm={"feature_layer": "ftfc7"})
    detector, trainer, lines = train(config, voc, tmp_path, first_run[1])
    assert "svm" not in ran(lines) and detector.svm_weights is None and detector.feature_scale is None
    test_set = VOCDataset(voc, "test", classes=detector.classes)
    metrics = test_model(detector, test_set, tmp_path / "test", trainer.cache, progress=False)
    maps, size = record_maps(detector, test_set[0], trainer.cache.source(test_set[0].path))
    boxes = np.array([[0, 0, 50, 40], [20, 10, 100, 90]], dtype=np.float64)
    features = detector.features(maps, boxes, size)
    with torch.no_grad():
        expected = torch.softmax(detector.head(features.pool5), dim=1)[:, 1:]
    torch.testing.assert_close(detector.score(features), expected)
    assert detector.score_threshold == config.test.softmax_threshold
    loaded = Detector.load(tmp_path / "model.pt", device="cpu", cache=trainer.cache)
    assert test_model(loaded, test_set, tmp_path / "test2", trainer.cache, progress=False) == metrics
    with pytest.raises(TrainingError, match="softmax scoring reads the fine-tuned head's fc8 on ftfc7, not pool5"):
        train(config.replace(svm={"feature_layer": "pool5"}), voc, tmp_path / "pool5", first_run[1])
    with pytest.raises(ConfigError, match="test.scoring"):
        TINY.replace(test={"scoring": "vote"})


def test_vgg16_head_without_a_7x7_level_is_a_clear_error(voc, tmp_path, monkeypatch):
    import features.backbones as backbones
    from features.backbones import _build_vgg16

    # random weights: no download; the error is about the pyramid, not the weights
    monkeypatch.setitem(backbones._BUILDERS, "vgg16", lambda weights, pretrained: _build_vgg16(weights, False))
    config = TINY.replace(features={"backbone": "vgg16"}, svm={"feature_layer": "fc7"}, finetune={"hidden": 4096})
    with pytest.raises(Exception, match=r"cannot build the fc head for vgg16: .*7×7") as info:
        train(config, voc, tmp_path, tmp_path / "cache", stages=("svm",))
    assert "\n" not in str(info.value)


class CountingExtractor:
    """Pools a window to (x1, y1, x2, y2, scale index): values exact in fp16, calls counted."""

    output_dim = 5

    def __init__(self):
        self.pooled = 0

    def pool(self, maps, boxes, image_size, scale_index=None):
        self.pooled += len(boxes)
        scales = torch.zeros(len(boxes)) if scale_index is None else torch.as_tensor(scale_index).float()
        return torch.cat([torch.as_tensor(boxes, dtype=torch.float32), scales[:, None]], dim=1)


def test_pooled_windows_pool_each_images_candidates_once_mirror_flips_and_stay_bounded():
    from types import SimpleNamespace

    from detection.training.memo import PooledWindows

    boxes = np.array([[0, 0, 9, 9], [10, 20, 30, 40], [5, 5, 50, 60], [1, 2, 3, 4]], dtype=np.float64)
    windows = [SimpleNamespace(boxes=boxes)]  # one image, index 1 is its mirror image
    candidates = [np.array([True, True, True, False])]
    extractor = CountingExtractor()
    # room for the 3 candidates at two scales: 2 × 3 vectors of 5 fp16 values
    pool = PooledWindows(extractor, lambda index: ([], (100, 200)), windows, candidates, max_bytes=2 * 3 * 5 * 2)
    reference = CountingExtractor()
    first = pool(0, np.array([2, 0, 2]), np.array([1, 0, 0]))
    assert torch.equal(first, reference.pool(None, boxes[[2, 0, 2]], None, [1, 0, 0]))
    assert extractor.pooled == 6  # every candidate at the two scales asked for, once
    again = pool(0, np.array([0, 1, 2]), np.array([0, 1, 1]))  # kept: nothing pooled
    assert torch.equal(again, reference.pool(None, boxes[:3], None, [0, 1, 1])) and extractor.pooled == 6
    with pytest.raises(ValueError, match=r"windows \[3\] are not candidates"):
        pool(0, np.array([3]), np.array([0]))
    # the mirror image's block does not fit any more: pooled per request, mirrored
    mirrored = pool(1, np.array([1]), None)
    assert mirrored[0].tolist() == [200 - 1 - 30, 20, 200 - 1 - 10, 40, 0] and extractor.pooled == 7
    pool(1, np.array([1]), None)
    assert extractor.pooled == 8 and pool.kept_bytes == 2 * 3 * 5 * 2
    assert pool(0, np.array([], dtype=np.int64), None).shape == (0, 5)
