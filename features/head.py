"""The fully connected head fine-tuned on SPP vectors: fc6 → fc7 → (K+1)-way fc8 (recipe §6).

Section numbers (§N) refer to docs/recipe.md. The conv layers stay frozen, so the head
sees only pooled vectors: (N, C · Σ n²), the concatenation of the pyramid levels (§3).

Where the backbone comes with an ImageNet classifier whose fc6 expects a single g×g grid
(torchvision AlexNet 6×6, VGG16 7×7), :func:`widen_fc6` turns that fc6 into one reading the whole
pyramid: its weights go onto the g×g level and every other level starts at zero, so the widened
head computes exactly what the pretrained one computes on the g×g pooling of the window.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detection.core.config import FRESH_FC_WIDTH, FinetuneConfig
from features.backbones import Backbone
from features.spp import spp_output_dim

FEATURE_LAYERS = ("fc6", "fc7")
# How fresh fc6/fc7 start (a backbone without a pretrained head, e.g. efficientnet_lite0):
# "pytorch": nn.Linear's default, U(±1/sqrt(fan_in)) weights and biases;
# "gaussian": Caffe's ImageNet fc6/fc7 (bvlc_reference_caffenet), N(0, 0.005²) weights, bias 0.1
#   (R-CNN and SPP-net start from those layers pretrained; this is how they were first initialised);
# "kaiming": He et al. normal for ReLU layers, N(0, 2/fan_in), bias 0;
# "xavier": Glorot normal, N(0, 2/(fan_in + fan_out)), bias 0.
FC_INITS = ("pytorch", "gaussian", "kaiming", "xavier")
CAFFE_FC_STD = 0.005
CAFFE_FC_BIAS = 0.1


class FCHead(nn.Module):
    """fc6 → ReLU → dropout → fc7 → ReLU → dropout → fc8.

    fc6 and fc7 start as ``init`` says (one of ``FC_INITS``), or are overwritten by :func:`build_head`
    with pretrained weights; the new fc8 is N(0, ``fc8_init_std``²) with zero bias (§6).

    Attributes:
        in_dim: length of the input SPP vector.
        hidden: width of fc6 and fc7.
        num_classes: K, or None for a head without fc8 (feature extraction only).
    """

    def __init__(self, in_dim: int, hidden: int = 4096, num_classes: int | None = None,
                 dropout: float = 0.5, fc8_init_std: float = 0.01, init: str = "pytorch"):
        super().__init__()
        if init not in FC_INITS:
            raise ValueError(f"unknown fc initialisation {init!r}; choose one of {', '.join(FC_INITS)}")
        self.in_dim, self.hidden, self.num_classes = in_dim, hidden, num_classes
        self.fc6 = nn.Linear(in_dim, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        for layer in (self.fc6, self.fc7):
            _initialise(layer, init)
        self.drop = nn.Dropout(dropout)
        self.fc8 = None
        if num_classes is not None:
            self.fc8 = nn.Linear(hidden, num_classes + 1)  # + 1: background is class 0
            nn.init.normal_(self.fc8.weight, std=fc8_init_std)
            nn.init.zeros_(self.fc8.bias)

    def features(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """(N, in_dim) SPP vectors -> (N, hidden) post-ReLU activations of ``layer`` ("fc6" or "fc7").

        Dropout is applied in train mode only (``nn.Dropout``), so eval-mode features are deterministic.
        """
        if layer not in FEATURE_LAYERS:
            raise ValueError(f"unknown head layer {layer!r}; choose one of {FEATURE_LAYERS}")
        h = self.drop(F.relu(self.fc6(x)))
        if layer == "fc6":
            return h
        return self.drop(F.relu(self.fc7(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) SPP vectors -> (N, K + 1) logits, column 0 = background."""
        if self.fc8 is None:
            raise RuntimeError("this head has no fc8 (built with num_classes=None); use features()")
        return self.fc8(self.features(x, "fc7"))

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, hidden={self.hidden}, num_classes={self.num_classes}"


def truncated_svd_linear(layer: nn.Linear, rank: int) -> nn.Module:
    """Fast R-CNN's truncated SVD (Girshick 2015, §3.1): ``layer`` Linear(in, out) as Linear(in, t,
    no bias) then Linear(t, out), whose weights multiply to the best rank-t approximation of the
    (out, in) weight W = U Σ Vᵀ (Eckart-Young): Σ_t V_tᵀ (t, in) first, then U_t (out, t) and the bias.

    A window then costs t · (in + out) multiply-adds instead of in · out. ``layer`` itself comes
    back when ``rank`` is 0 or saves nothing (t · (in + out) >= in · out).
    """
    out_features, in_features = layer.weight.shape
    if rank <= 0 or rank * (in_features + out_features) >= in_features * out_features:
        return layer
    with torch.no_grad():
        u, sigma, vh = torch.linalg.svd(layer.weight.double(), full_matrices=False)
        first = nn.Linear(in_features, rank, bias=False, device=layer.weight.device, dtype=layer.weight.dtype)
        second = nn.Linear(rank, out_features, device=layer.weight.device, dtype=layer.weight.dtype)
        first.weight.copy_(sigma[:rank, None] * vh[:rank])
        second.weight.copy_(u[:, :rank])
        second.bias.copy_(layer.bias)
    return nn.Sequential(first, second)


def truncated_head(head: FCHead, fc6_rank: int, fc7_rank: int) -> FCHead:
    """``head`` with fc6 and fc7 replaced by their :func:`truncated_svd_linear` of these ranks (0:
    kept exact): ``head`` itself when neither is truncated, else a copy sharing its other layers
    (``head`` unchanged)."""
    fc6, fc7 = truncated_svd_linear(head.fc6, fc6_rank), truncated_svd_linear(head.fc7, fc7_rank)
    if fc6 is head.fc6 and fc7 is head.fc7:
        return head
    truncated = copy.copy(head)
    truncated._modules = dict(head._modules, fc6=fc6, fc7=fc7)  # copy.copy shares the module dict
    return truncated


def _initialise(layer: nn.Linear, init: str) -> None:
    """Re-initialise a fresh fc layer in place as ``init`` (one of ``FC_INITS``) says."""
    if init == "pytorch":
        return
    with torch.no_grad():
        if init == "gaussian":
            nn.init.normal_(layer.weight, std=CAFFE_FC_STD)
            nn.init.constant_(layer.bias, CAFFE_FC_BIAS)
            return
        if init == "kaiming":
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        else:
            nn.init.xavier_normal_(layer.weight)
        nn.init.zeros_(layer.bias)


def widen_fc6(pretrained_fc6: nn.Linear, channels: int, head_grid: int, levels: Sequence[int]) -> nn.Linear:
    """A pyramid-reading fc6 that equals ``pretrained_fc6`` on the ``head_grid`` level (§6).

    The pretrained fc6 reads one C×g×g grid flattened channel-major, c·g² + y·g + x (torchvision's
    ``flatten`` after the g×g pooling). Each pyramid level is flattened the same way and the levels
    are concatenated (§3), so the pretrained weights are copied unchanged onto the g×g level's
    block and the other levels' weights are zero: on any window the widened layer gives the
    pretrained layer's output for the window's g×g max pooling. The bias is copied.

    Args:
        pretrained_fc6: Linear(C · g², H).
        channels: C, the conv map's channels.
        head_grid: g.
        levels: the pyramid levels n, in the SPP vector's order; must contain g.

    Returns:
        Linear(C · Σ n², H) on ``pretrained_fc6``'s device and dtype.

    Raises:
        ValueError: g is not a level, or the pretrained fc6 does not read C · g² inputs.
    """
    levels = tuple(levels)
    if head_grid not in levels:
        # spatial_pyramid_pool takes any level n, so the finest level can simply become g
        suggestion = ",".join(str(n) for n in sorted({*levels[:-1], head_grid}))
        raise ValueError(
            f"the pretrained fc6 reads one {head_grid}×{head_grid} grid, but the pyramid levels "
            f"{','.join(map(str, levels))} have no {head_grid}×{head_grid} level to copy it onto; use a level equal "
            f"to the grid (e.g. --pyramid {suggestion}) or train fresh fc layers")
    block = channels * head_grid * head_grid
    if pretrained_fc6.in_features != block:
        raise ValueError(f"the pretrained fc6 reads {pretrained_fc6.in_features} inputs, not {channels}·{head_grid}² "
                         f"= {block}: it does not belong to this backbone")
    start = spp_output_dim(channels, levels[:levels.index(head_grid)])
    weight = pretrained_fc6.weight.detach()
    # skip_init: every value is set below, so no random initialisation (nor the global RNG) is spent
    widened = nn.utils.skip_init(nn.Linear, spp_output_dim(channels, levels), pretrained_fc6.out_features,
                                 device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        widened.weight.zero_()
        widened.weight[:, start:start + block] = weight
        widened.bias.copy_(pretrained_fc6.bias)
    return widened


def build_head(backbone: Backbone, levels: Sequence[int], config: FinetuneConfig, num_classes: int | None,
               pretrained: bool = True) -> FCHead:
    """The head to fine-tune on ``backbone``'s SPP vectors, on the CPU.

    With ``pretrained`` and a backbone carrying ``pretrained_head`` and ``head_grid`` (alexnet,
    vgg16), fc6 is the widened pretrained fc6 (:func:`widen_fc6`) and fc7 a copy of the pretrained
    fc7; otherwise both are fresh, ``config.hidden`` wide (``FRESH_FC_WIDTH`` when None). Random initialisation (fresh fc6/fc7, fc8) is seeded by
    ``config.seed`` without touching the global RNG.

    Raises:
        ValueError: a pretrained head is used but ``config.hidden`` is not its width, or
            ``levels`` lack the head's grid (see :func:`widen_fc6`).
    """
    source = getattr(backbone, "pretrained_head", None)
    grid = getattr(backbone, "head_grid", None)
    widen = pretrained and source is not None and grid is not None
    if widen:
        fc6, fc7 = _pretrained_fc6_fc7(source)
        if config.hidden not in (None, fc6.out_features):
            raise ValueError(f"{backbone.name}'s pretrained fc6/fc7 are {fc6.out_features} wide; set the fine-tuning "
                             f"hidden width to {fc6.out_features} or train fresh fc layers")
        # .cpu(): the backbone may already sit on an accelerator (the extractor moves it there)
        widened_fc6 = widen_fc6(fc6, backbone.channels, grid, levels).cpu()
    hidden = fc6.out_features if widen else config.hidden or FRESH_FC_WIDTH
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(config.seed)  # the CPU generator only: the head is built on the CPU
        head = FCHead(spp_output_dim(backbone.channels, levels), hidden, num_classes, config.dropout,
                      config.fc8_init_std, config.init)
    if widen:
        head.fc6 = widened_fc6
        head.fc7.load_state_dict(fc7.state_dict())
    return head


def _pretrained_fc6_fc7(classifier: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The first two Linear layers of a pretrained classifier, whatever dropout/ReLU surround them."""
    linears = [m for m in classifier.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2 or linears[0].out_features != linears[1].in_features:
        raise ValueError(f"expected a pretrained classifier with fc6 and fc7, got {classifier}")
    return linears[0], linears[1]
