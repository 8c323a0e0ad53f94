"""The config tree checks itself: types, ranges and names when built; dotted overrides, YAML files,
strict model files, the allowed names and schedules in one place, and the device rule."""
import dataclasses
import math
import re
import typing

import pytest
import torch

from detection.core.config import (
    BACKBONES,
    SCHEDULES,
    BBoxConfig,
    ConfigError,
    FeatureConfig,
    FinetuneConfig,
    ProposalConfig,
    ScheduleName,
    SPPConfig,
    SVMConfig,
    fingerprint,
    read_config_file,
)
from detection.core.config import TestConfig as _TestSection  # a Test* name would be collected by pytest
from detection.detector import Detector, DeviceError, ModelFileError, resolve_device

SECTIONS = (ProposalConfig, FeatureConfig, FinetuneConfig, SVMConfig, BBoxConfig, _TestSection)


@pytest.mark.parametrize("section, changes, message", [
    # the cases of issue 9 §3
    (FeatureConfig, {"pyramid_levels": (0, -1)},
     "features.pyramid_levels: must be a non-empty list of integers >= 1, got 0,-1"),
    (SVMConfig, {"C": -1.0}, "svm.C: must be > 0, got -1"),
    (FinetuneConfig, {"checkpoint_every": 0}, "finetune.checkpoint_every: must be >= 1, got 0"),
    (ProposalConfig, {"max_proposals": -5}, "proposals.max_proposals: must be >= 1, got -5"),
    (_TestSection, {"score_threshold": math.nan}, "test.score_threshold: must be a finite number, got nan"),
    # names, types and the rest of the tree
    (ProposalConfig, {"mode": "slow"}, "proposals.mode: must be one of rcnn_fast, opencv_fast, quality, got 'slow'"),
    (FeatureConfig, {"backbone": "resnet50"},
     "features.backbone: must be one of efficientnet_lite0, efficientnet_lite0_s32, efficientnet_lite0_s16+s32, "
     "alexnet, vgg16, zf5, got 'resnet50'"),
    (FeatureConfig, {"scales": ()}, "features.scales: must be a non-empty list of integers >= 1, got "),
    (FeatureConfig, {"scales": (688.5,)}, "features.scales: must be a list of integers, got 688.5"),
    (FinetuneConfig, {"hidden": 1.5}, "finetune.hidden: must be an integer, got 1.5"),
    (FinetuneConfig, {"flip": "yes"}, "finetune.flip: must be true or false, got 'yes'"),
    (FinetuneConfig, {"dropout": 1.0}, "finetune.dropout: must be in [0, 1), got 1"),
    (FinetuneConfig, {"bg_low": 0.5}, "finetune.bg_low: must be below finetune.bg_high (0.5), got 0.5"),
    (FinetuneConfig, {"base_lr": 0.0}, "finetune.base_lr: must be > 0, got 0"),
    (FinetuneConfig, {"iterations": True}, "finetune.iterations: must be an integer, got True"),
    (SVMConfig, {"feature_layer": "fc8"}, "svm.feature_layer: must be one of pool5, fc6, fc7, ftfc6, ftfc7, ftfc7+pool5"),
    (SVMConfig, {"negative_overlap": 1.5}, "svm.negative_overlap: must be in [0, 1], got 1.5"),
    (SVMConfig, {"evict_threshold": -math.inf}, "svm.evict_threshold: must be a finite number, got -inf"),
    (BBoxConfig, {"ridge_lambda": 0.0}, "bbox.ridge_lambda: must be > 0, got 0"),
    (_TestSection, {"nms_iou": 1.2}, "test.nms_iou: must be in [0, 1], got 1.2"),
    (_TestSection, {"max_per_image": -1}, "test.max_per_image: must be >= 0, got -1"),
    (_TestSection, {"max_per_class": -1}, "test.max_per_class: must be >= 0, got -1"),
    (SVMConfig, {"cache_dtype": "float64"}, "svm.cache_dtype: must be one of float32, float16"),
    (SVMConfig, {"calibration_folds": 1}, "svm.calibration_folds: must be 0 or >= 2, got 1"),
])
def test_a_bad_value_is_refused_when_the_section_is_made(section, changes, message):
    with pytest.raises(ConfigError) as caught:
        section(**changes)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert caught.value.key.split(".")[1] in changes


def test_every_numeric_option_has_a_range_and_every_name_its_choices():
    # thresholds in SVM margin units and an offset in pixels may be any finite number
    any_finite = {"features.official_offset", "svm.hard_negative_threshold", "svm.evict_threshold",
                  "test.score_threshold"}
    for section in SECTIONS:
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            key, annotation = f"{section._name}.{f.name}", hints[f.name]
            inner = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
            if inner[0] in (int, float) or typing.get_origin(annotation) is tuple:
                assert f.name in section._rules or key in any_finite, f"{key} has no range rule"
            elif f.name != "backbone_weights":
                assert annotation is bool or typing.get_origin(annotation) is typing.Literal, key


def test_values_are_made_exact():
    cfg = FeatureConfig(scales=[480, 688], official_offset=6)
    assert cfg.scales == (480, 688) and isinstance(cfg.official_offset, float)
    assert SVMConfig(C=1).C == 1.0 and isinstance(SVMConfig(C=1).C, float)


def test_override_reads_text_by_type_and_names_a_bad_key():
    cfg = SPPConfig().override({"svm.C": "0.002", "features.scales": "480,688", "finetune.base_lr": "1e-4",
                                "bbox.enabled": "false", "features.backbone_weights": "null",
                                "test.nms_iou": 0.4, "features.pyramid_levels": [1, 2]})
    assert (cfg.svm.C, cfg.features.scales, cfg.finetune.base_lr, cfg.bbox.enabled) == (0.002, (480, 688), 1e-4, False)
    assert cfg.features.backbone_weights is None and cfg.test.nms_iou == 0.4 and cfg.features.pyramid_levels == (1, 2)
    cases = {
        "svm.CC": "svm.CC: unknown option (did you mean svm.C?); svm has feature_layer,",
        "sv.C": "sv.C: unknown option: no section 'sv' (did you mean svm?)",
        "svm": "svm: unknown option; svm has",
    }
    for key, message in cases.items():
        with pytest.raises(ConfigError, match="^" + re.escape(message)):
            SPPConfig().override({key: "1"})
    with pytest.raises(ConfigError, match=r"^svm\.C: must be a number, got 'abc'$"):
        SPPConfig().override({"svm.C": "abc"})
    with pytest.raises(ConfigError, match=r"^features\.scales: must be a comma-separated list of integers"):
        SPPConfig().override({"features.scales": "480;688"})
    with pytest.raises(ConfigError, match=r"^svm\.C: cannot change after training: only the proposals\.\* and test"):
        SPPConfig().override({"svm.C": 1.0}, sections=("proposals", "test"))


def test_yaml_round_trip_and_file_errors(tmp_path):
    cfg = SPPConfig().override({"features.scales": (480, 688), "svm.C": 0.002, "finetune.base_lr": 1e-4})
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    assert SPPConfig().override(read_config_file(path)) == cfg
    dotted = tmp_path / "dotted.yaml"
    dotted.write_text("svm.C: 1e-3\ntest:\n  nms_iou: 0.4\n")  # PyYAML reads 1e-3 as text: read by type
    assert SPPConfig().override(read_config_file(dotted)).svm.C == 0.001
    bad = tmp_path / "bad.yaml"
    bad.write_text("svm:\n  C: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not a YAML file at line \d"):
        read_config_file(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: expected a mapping of options"):
        read_config_file(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read the config file"):
        read_config_file(tmp_path / "missing.yaml")


def test_from_dict_refuses_unknown_keys_and_keeps_defaults_for_missing_ones():
    saved = SPPConfig().to_dict()
    del saved["svm"]["C"]
    assert SPPConfig.from_dict(saved) == SPPConfig()
    saved["svm"]["hard_negatives"] = 3
    with pytest.raises(ConfigError, match=r"^svm\.hard_negatives: unknown option"):
        SPPConfig.from_dict(saved)


def test_names_and_schedules_have_one_source():
    from features.backbones import _BUILDERS
    from features.finetune import learning_rate

    assert set(BACKBONES) == set(_BUILDERS)
    assert set(SCHEDULES) == set(typing.get_args(ScheduleName))
    config = FinetuneConfig(iterations=90_000)
    assert learning_rate(config, 0) == 1e-3 and learning_rate(config, 30_000) == pytest.approx(1e-4)
    assert learning_rate(dataclasses.replace(config, base_lr=5e-3), 30_000) == pytest.approx(5e-4)
    assert SPPConfig.preset("demo").finetune.iterations == 500


def test_fine_tuning_fingerprints_ignore_checkpoints_and_keep_their_old_values():
    # the value before checkpoint_every was checked (it was hashed as 0), at the old default width
    # 4096 and the old dropout, foreground share and length, with the options added since at their
    # old behaviour: existing caches of those settings stay valid
    old = FinetuneConfig(hidden=4096, dropout=0.5, fg_fraction=0.25, iterations=2000)
    assert fingerprint("finetune", old.weight_settings()) == "6d8462e6fa7b5b84"
    assert FinetuneConfig(init="kaiming").weight_settings()["init"] == "kaiming"
    every = FinetuneConfig(checkpoint_every=7).weight_settings()
    assert every == FinetuneConfig().weight_settings()
    assert FinetuneConfig(base_lr=1e-4).weight_settings() != FinetuneConfig().weight_settings()


def test_load_takes_test_time_overrides_and_refuses_others(untrained_model):
    detector = Detector.load(untrained_model, overrides={"test.nms_iou": "0.4", "proposals.max_proposals": 50})
    assert detector.config.test.nms_iou == 0.4 and detector.config.proposals.max_proposals == 50
    assert detector.config.features.pyramid_levels == (1, 2)
    with pytest.raises(ConfigError, match="svm.C: cannot change after training"):
        Detector.load(untrained_model, overrides={"svm.C": 1.0})


def test_a_model_with_an_unknown_config_key_names_the_file_and_key(untrained_model, tmp_path):
    state = torch.load(untrained_model, weights_only=True)
    state["config"]["test"]["soft_nms"] = True
    path = tmp_path / "other-version.pt"
    torch.save(state, path)
    with pytest.raises(ModelFileError) as caught:
        Detector.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and "test.soft_nms: unknown option" in message and "\n" not in message


def test_device_auto_and_a_missing_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") and resolve_device(None) == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^device 'cuda' requested but .*; use cpu or auto$"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'gpu'"):
        resolve_device("gpu")
