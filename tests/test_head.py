"""The fc head (recipe §6): shapes, layer features, and widening a pretrained single-grid fc6."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detection.core.config import FRESH_FC_WIDTH, FinetuneConfig
from features.backbones import build_backbone
from features.head import FCHead, build_head, widen_fc6
from features.spp import spatial_pyramid_pool, spp_output_dim

LEVELS = (1, 2, 3, 6)
# inclusive cell boxes (x0, y0, x1, y1): exactly 6×6 cells (each 6-level bin one cell), larger
# windows whose bins overlap, and windows smaller than the grid (bins repeat cells)
WINDOWS = torch.tensor([[3, 2, 8, 7], [0, 0, 12, 12], [4, 1, 20, 16], [5, 5, 9, 14], [2, 3, 3, 4], [0, 0, 23, 17]])


def grid_features(fmap: torch.Tensor, cells: torch.Tensor, grid: int) -> torch.Tensor:
    """What a pretrained single-grid fc6 reads: each window's g×g max pooling, flattened as torchvision does.

    Adaptive max pooling's bins, floor(i·w/g) .. ceil((i+1)·w/g) - 1, are SPP's (§3).
    """
    crops = [fmap[:, y0:y1 + 1, x0:x1 + 1] for x0, y0, x1, y1 in cells.tolist()]
    return torch.stack([torch.flatten(F.adaptive_max_pool2d(c, grid)) for c in crops])


def alexnet_like_classifier(in_features: int, hidden: int) -> nn.Sequential:
    """torchvision AlexNet's classifier layout: dropout, fc6, ReLU, dropout, fc7, ReLU, fc8."""
    return nn.Sequential(nn.Dropout(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1000))


@pytest.fixture(scope="module")
def zf5():
    torch.manual_seed(0)
    return build_backbone("zf5", pretrained=False)


def test_fc_head_shapes_and_layers():
    torch.manual_seed(0)
    head = FCHead(40, hidden=16, num_classes=3).eval()
    x = torch.rand(5, 40)
    assert head(x).shape == (5, 4)
    fc6, fc7 = head.features(x, "fc6"), head.features(x, "fc7")
    assert fc6.shape == fc7.shape == (5, 16)
    assert (fc6 >= 0).all() and (fc7 >= 0).all()  # post-ReLU
    assert torch.equal(fc6, F.relu(head.fc6(x)))
    assert torch.equal(fc7, F.relu(head.fc7(fc6)))
    assert torch.equal(head(x), head.fc8(fc7))
    assert (head.in_dim, head.hidden, head.num_classes) == (40, 16, 3)
    with pytest.raises(ValueError, match="fc8"):
        head.features(x, "fc8")


def test_fc_head_dropout_only_in_train_mode():
    torch.manual_seed(0)
    head = FCHead(40, hidden=256, num_classes=3)
    x = torch.rand(4, 40)
    head.train()
    assert not torch.equal(head.features(x, "fc6"), head.features(x, "fc6"))
    assert (head.features(x, "fc6") == 0).float().mean() > 0.3
    head.eval()
    assert torch.equal(head.features(x, "fc7"), head.features(x, "fc7"))


def test_fc8_initialisation_and_no_fc8_head():
    torch.manual_seed(0)
    head = FCHead(8, hidden=2000, num_classes=20)
    assert head.fc8.weight.shape == (21, 2000)
    assert torch.equal(head.fc8.bias, torch.zeros(21))
    assert head.fc8.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.fc8.weight.mean().abs().item() < 1e-3
    features_only = FCHead(8, hidden=4)
    assert features_only.fc8 is None
    assert features_only.features(torch.rand(2, 8), "fc7").shape == (2, 4)
    with pytest.raises(RuntimeError, match="no fc8"):
        features_only(torch.rand(2, 8))


@pytest.mark.parametrize("init, weight_std, bias", [
    ("gaussian", lambda fan_in, fan_out: 0.005, 0.1),
    ("kaiming", lambda fan_in, fan_out: (2 / fan_in) ** 0.5, 0.0),
    ("xavier", lambda fan_in, fan_out: (2 / (fan_in + fan_out)) ** 0.5, 0.0),
    ("pytorch", lambda fan_in, fan_out: (1 / (3 * fan_in)) ** 0.5, None),  # U(±1/sqrt(fan_in)): std 1/sqrt(3·fan_in)
])
def test_fresh_fc_initialisations(init, weight_std, bias):
    torch.manual_seed(0)
    head = FCHead(3000, hidden=400, num_classes=5, init=init)
    for layer in (head.fc6, head.fc7):
        fan_out, fan_in = layer.weight.shape
        assert layer.weight.std().item() == pytest.approx(weight_std(fan_in, fan_out), rel=0.05)
        assert layer.weight.mean().abs().item() < 0.1 * weight_std(fan_in, fan_out)
        if bias is not None:
            assert torch.equal(layer.bias, torch.full_like(layer.bias, bias))
    assert head.fc8.weight.std().item() == pytest.approx(0.01, rel=0.05)  # fc8 keeps its own N(0, 0.01²)
    with pytest.raises(ValueError, match="initialisation"):
        FCHead(8, hidden=4, init="orthogonal")


@pytest.mark.parametrize("levels, grid", [((1, 2, 3, 6), 6), ((6, 3, 2, 1), 6), ((1, 2, 3, 7), 7), ((2, 4), 4)])
def test_widened_fc6_equals_pretrained_fc6_on_the_grid(levels, grid):
    torch.manual_seed(0)
    channels, hidden = 8, 32
    fmap = torch.relu(torch.randn(channels, 18, 24))
    pretrained = nn.Linear(channels * grid * grid, hidden)
    widened = widen_fc6(pretrained, channels, grid, levels)
    assert widened.in_features == spp_output_dim(channels, levels)
    spp = spatial_pyramid_pool(fmap, WINDOWS, levels)
    grids = grid_features(fmap, WINDOWS, grid)
    torch.testing.assert_close(widened(spp), pretrained(grids), rtol=1e-5, atol=1e-5)
    # the g-level block of the SPP vector is the grid itself, and only that block has weights
    start = spp_output_dim(channels, levels[:levels.index(grid)])
    block = slice(start, start + channels * grid * grid)
    assert torch.equal(spp[:, block], grids)
    assert torch.equal(widened.weight[:, block], pretrained.weight)
    assert widened.weight.count_nonzero() == pretrained.weight.count_nonzero()
    assert torch.equal(widened.bias, pretrained.bias)


def test_one_cell_per_bin_window_is_the_grid():
    """A 6×6-cell window: its 6-level bins are single cells, so the grid is the window's cells."""
    fmap = torch.relu(torch.randn(4, 10, 10))
    spp = spatial_pyramid_pool(fmap, torch.tensor([[2, 3, 7, 8]]), LEVELS)
    start = spp_output_dim(4, (1, 2, 3))
    assert torch.equal(spp[0, start:], fmap[:, 3:9, 2:8].flatten())


def test_widen_fc6_refuses_a_grid_missing_from_the_pyramid():
    vgg_fc6 = nn.Linear(512 * 7 * 7, 8)
    with pytest.raises(ValueError, match=r"no 7×7 level.*--pyramid 1,2,3,7"):
        widen_fc6(vgg_fc6, 512, 7, (1, 2, 3, 6))
    with pytest.raises(ValueError, match="does not belong"):
        widen_fc6(nn.Linear(100, 8), 512, 7, (1, 2, 3, 7))


def test_build_head_widens_a_pretrained_classifier(zf5, monkeypatch):
    hidden = 64
    torch.manual_seed(1)
    classifier = alexnet_like_classifier(zf5.channels * 36, hidden)
    monkeypatch.setattr(zf5, "pretrained_head", classifier)
    monkeypatch.setattr(zf5, "head_grid", 6)
    config = FinetuneConfig(hidden=hidden)
    rng_before = torch.get_rng_state()
    head = build_head(zf5, LEVELS, config, num_classes=5).eval()
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeded without touching the global RNG
    assert head.in_dim == spp_output_dim(zf5.channels, LEVELS) and head.fc8.out_features == 6
    assert torch.equal(head.fc7.weight, classifier[4].weight) and torch.equal(head.fc7.bias, classifier[4].bias)
    # the widened net equals the original on the matching grid, through fc6 and fc7
    fmap = torch.relu(torch.randn(zf5.channels, 18, 24))
    original = classifier[:6].eval()
    torch.testing.assert_close(head.features(spatial_pyramid_pool(fmap, WINDOWS, LEVELS), "fc7"),
                               original(grid_features(fmap, WINDOWS, 6)), rtol=1e-5, atol=1e-5)
    fresh = build_head(zf5, LEVELS, config, num_classes=5, pretrained=False)
    assert not torch.equal(fresh.fc7.weight, head.fc7.weight)
    assert fresh.fc6.weight.count_nonzero() == fresh.fc6.weight.numel()
    with pytest.raises(ValueError, match="64 wide"):
        build_head(zf5, LEVELS, FinetuneConfig(hidden=32), num_classes=5)
    # the default width is the pretrained head's own; a fresh head gets FRESH_FC_WIDTH
    assert build_head(zf5, LEVELS, FinetuneConfig(), num_classes=5).hidden == hidden
    assert build_head(zf5, LEVELS, FinetuneConfig(), num_classes=5, pretrained=False).hidden == FRESH_FC_WIDTH
    with pytest.raises(ValueError, match="no 6×6 level"):
        build_head(zf5, (1, 2, 4), config, num_classes=5)


def test_build_head_fresh_is_seeded(zf5):
    assert zf5.pretrained_head is None
    config = FinetuneConfig(hidden=32, seed=3)
    first = build_head(zf5, (1, 2), config, num_classes=4)
    again = build_head(zf5, (1, 2), config, num_classes=4)
    other = build_head(zf5, (1, 2), FinetuneConfig(hidden=32, seed=4), num_classes=4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(first.fc6.weight, other.fc6.weight)
    assert first.in_dim == zf5.channels * 5 and first.hidden == 32 and first.fc8.out_features == 5
    gaussian = build_head(zf5, (1, 2), FinetuneConfig(hidden=32, init="gaussian"), num_classes=4)
    assert torch.equal(gaussian.fc6.bias, torch.full((32,), 0.1))  # config.init reaches the fresh layers


def test_build_head_on_torchvision_alexnet():
    """The real layout: classifier[1:6] of torchvision's AlexNet, 9216 → 4096 → 4096, widened to 12,800 inputs."""
    torch.manual_seed(0)
    alexnet = build_backbone("alexnet", pretrained=False)
    head = build_head(alexnet, LEVELS, FinetuneConfig(), num_classes=20).eval()
    assert (head.fc6.in_features, head.hidden, head.fc8.out_features) == (12800, 4096, 21)
    fmap = torch.relu(torch.randn(256, 14, 16))
    cells = WINDOWS[:2]
    with torch.no_grad():
        torch.testing.assert_close(head.features(spatial_pyramid_pool(fmap, cells, LEVELS), "fc7"),
                                   alexnet.pretrained_head.eval()(grid_features(fmap, cells, 6)),
                                   rtol=1e-4, atol=1e-5)


def test_ftfc7_beside_pool5_is_both_parts_l2_normalised_per_window():
    from detection.detector import head_layer, layer_features

    torch.manual_seed(0)
    head = FCHead(40, 16, None).eval()
    pool5 = torch.relu(torch.randn(6, 40)) * torch.arange(1.0, 7.0)[:, None]  # windows of other magnitudes
    pool5[5] = 0  # a window whose pyramid is all zero stays zero, not NaN
    features = layer_features(pool5, head, "ftfc7+pool5")
    assert head_layer("ftfc7+pool5") == "fc7" and features.shape == (6, 56)
    fc7 = head.features(pool5, "fc7")
    for row in range(6):  # the slow reference: one window at a time
        norms = [float(pool5[row].norm()), float(fc7[row].norm())]
        expected = torch.cat([pool5[row] / max(norms[0], 1e-12), fc7[row] / max(norms[1], 1e-12)])
        torch.testing.assert_close(features[row], expected)
    assert torch.allclose(features[:5, :40].norm(dim=1), torch.ones(5))
    assert torch.equal(layer_features(pool5, head, "ftfc7"), fc7)


@pytest.mark.parametrize("feature_layer", ["pool5", "fc6", "ftfc7", "ftfc7+pool5"])
def test_svm_margins_equal_the_matmul_of_the_joined_features(feature_layer):
    from detection.detector import head_layer, layer_features, svm_margins

    torch.manual_seed(1)
    head = FCHead(40, 16, None).eval()
    pool5 = torch.relu(torch.randn(7, 40)) * torch.arange(1.0, 8.0)[:, None]
    pool5[6] = 0  # a zero pyramid: its pool5 part adds nothing, as a zero row of the join
    layer = head_layer(feature_layer)
    with torch.no_grad():
        activations = None if layer is None else head.features(pool5, layer)
    features = layer_features(pool5, head, feature_layer)
    weights, bias = torch.randn(3, features.shape[1]), torch.randn(3)
    margins = svm_margins(pool5, activations, feature_layer, weights, bias, scale=20.0)
    torch.testing.assert_close(margins, bias + 20.0 * features @ weights.T)


def best_rank_approximation(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """Eckart-Young by numpy: the rank-t matrix nearest ``weight`` (out, in)."""
    import numpy as np

    u, sigma, vh = np.linalg.svd(weight.detach().double().numpy(), full_matrices=False)
    return torch.from_numpy((u[:, :rank] * sigma[:rank]) @ vh[:rank])


@torch.no_grad()
def test_truncated_svd_linear_is_the_best_rank_t_layer():
    from features.head import truncated_svd_linear

    torch.manual_seed(0)
    layer = nn.Linear(60, 20)
    x = torch.randn(7, 60)
    for rank in (1, 5, 10):
        truncated = truncated_svd_linear(layer, rank)
        assert [m.weight.shape for m in truncated] == [(rank, 60), (20, rank)]
        expected = x.double() @ best_rank_approximation(layer.weight, rank).T + layer.bias.double()
        torch.testing.assert_close(truncated(x).double(), expected, rtol=1e-4, atol=1e-5)
    errors = [float((truncated_svd_linear(layer, t)(x) - layer(x)).norm()) for t in (2, 6, 12)]
    assert errors[0] > errors[1] > errors[2] > 0
    # a weight of rank 3 is kept exactly by 3 singular values
    layer.weight.copy_(torch.randn(20, 3) @ torch.randn(3, 60))
    torch.testing.assert_close(truncated_svd_linear(layer, 3)(x), layer(x), rtol=1e-4, atol=1e-4)
    # no saving (15 · (60 + 20) >= 60 · 20) or rank 0: the layer itself
    assert truncated_svd_linear(layer, 15) is layer and truncated_svd_linear(layer, 0) is layer


@torch.no_grad()
def test_truncated_head_leaves_the_trained_head_alone():
    from features.head import truncated_head

    torch.manual_seed(1)
    head = FCHead(90, 40, 3).eval()
    before = {k: v.clone() for k, v in head.state_dict().items()}
    assert truncated_head(head, 0, 0) is head
    truncated = truncated_head(head, 8, 0)
    assert isinstance(head.fc6, nn.Linear) and isinstance(truncated.fc6, nn.Sequential)
    assert truncated.fc7 is head.fc7 and truncated.fc8 is head.fc8
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in before.items())
    x = torch.randn(5, 90)
    fc6 = F.relu(x.double() @ best_rank_approximation(head.fc6.weight, 8).T + head.fc6.bias.double())
    expected = F.relu(fc6 @ head.fc7.weight.double().T + head.fc7.bias.double())
    torch.testing.assert_close(truncated.features(x, "fc7").double(), expected, rtol=1e-4, atol=1e-5)
    both = truncated_head(head, 8, 4)
    assert [m.weight.shape[0] for m in both.fc7] == [4, 40]
