"""Spatial pyramid pooling (recipe §3) against a slow per-window, per-bin reference."""
import numpy as np
import pytest
import torch

from features import spp
from features.spp import spatial_pyramid_pool, spp_output_dim, whole_map_pyramid_pool

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def spatial_pyramid_pool_reference(feature_map, cell_boxes, levels=(1, 2, 3, 6), batch_index=None):
    """Straight from §3, per window, level and bin: bin i spans floor(i·w/n) .. ceil((i+1)·w/n) - 1."""
    fmap = feature_map if feature_map.dim() == 4 else feature_map[None]
    rows = []
    for k, (x0, y0, x1, y1) in enumerate(cell_boxes.tolist()):
        image = fmap[0 if batch_index is None else int(batch_index[k])]
        w, h = x1 - x0 + 1, y1 - y0 + 1
        parts = []
        for n in levels:
            level = torch.empty(image.shape[0], n, n, dtype=image.dtype, device=image.device)
            for by in range(n):
                for bx in range(n):
                    ys, ye = y0 + by * h // n, y0 + -(-(by + 1) * h // n)
                    xs, xe = x0 + bx * w // n, x0 + -(-(bx + 1) * w // n)
                    level[:, by, bx] = image[:, ys:ye, xs:xe].amax(dim=(1, 2))
            parts.append(level.flatten())  # channel · n² + y · n + x
        rows.append(torch.cat(parts))
    return torch.stack(rows)


def random_cells(rng, n, height, width):
    """Random inclusive cell boxes, plus 1×1 cells, whole-map windows and windows on every border."""
    max_size = max(height, width)
    x0 = rng.integers(0, width, n)
    y0 = rng.integers(0, height, n)
    x1 = np.minimum(x0 + rng.integers(0, max_size, n), width - 1)
    y1 = np.minimum(y0 + rng.integers(0, max_size, n), height - 1)
    special = [[0, 0, 0, 0], [width - 1, height - 1, width - 1, height - 1], [0, 0, width - 1, height - 1],
               [0, 2, 1, height - 1], [width - 2, 0, width - 1, 0], [3, 1, 4, 3]]
    return torch.tensor(np.concatenate([np.stack([x0, y0, x1, y1], axis=1), special]), dtype=torch.int64)


def test_output_dim():
    assert spp_output_dim(256, (1, 2, 3, 6)) == 12800
    assert spp_output_dim(7, (1, 2, 3, 6)) == 50 * 7
    assert spp_output_dim(3, (6, 1)) == 3 * 37


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("levels", [(1, 2, 3, 6), (6, 1, 3), (4, 2)])
def test_matches_reference_on_random_windows(device, levels):
    rng = np.random.default_rng(len(levels))
    fmap = torch.randn(5, 11, 14, device=device)  # signed values: an empty or padded bin would show
    cells = random_cells(rng, 80, 11, 14).to(device)
    out = spatial_pyramid_pool(fmap, cells, levels)
    assert out.shape == (len(cells), spp_output_dim(5, levels)) and out.device.type == device
    torch.testing.assert_close(out, spatial_pyramid_pool_reference(fmap, cells, levels), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_windows_smaller_than_the_level_repeat_cells(device):
    fmap = torch.rand(3, 6, 8, device=device)
    # 1×1, 2×3 and 5×4 cells: at level 6 every bin is one cell and cells repeat
    cells = torch.tensor([[4, 2, 4, 2], [1, 1, 2, 3], [3, 0, 7, 3]], device=device)
    out = spatial_pyramid_pool(fmap, cells, (1, 2, 3, 6))
    torch.testing.assert_close(out, spatial_pyramid_pool_reference(fmap, cells, (1, 2, 3, 6)), rtol=0, atol=0)
    # a 1×1 window is that cell's vector in every bin of every level
    expected = torch.cat([fmap[:, 2, 4, None].expand(3, n * n).flatten() for n in (1, 2, 3, 6)])
    assert torch.equal(out[0], expected)


@pytest.mark.parametrize("device", DEVICES)
def test_flatten_is_channel_major_per_level(device):
    # value = 100·channel + 10·y + x on a 2×4×4 map, whole-map window: the max of each bin is its
    # bottom-right cell, so the expected vector can be written down
    c, y, x = torch.meshgrid(torch.arange(2), torch.arange(4), torch.arange(4), indexing="ij")
    fmap = (100 * c + 10 * y + x).float().to(device)
    out = spatial_pyramid_pool(fmap, torch.tensor([[0, 0, 3, 3]], device=device), (1, 2))
    # level 1: [33, 133]; level 2 bins (y, x) end at cells 1 and 3: [11, 13, 31, 33] per channel
    assert out[0].tolist() == [33, 133, 11, 13, 31, 33, 111, 113, 131, 133]


@pytest.mark.parametrize("device", DEVICES)
def test_batch_index_picks_the_map(device):
    rng = np.random.default_rng(3)
    fmaps = torch.rand(3, 4, 9, 10, device=device)
    cells = random_cells(rng, 30, 9, 10).to(device)
    batch_index = torch.tensor(rng.integers(0, 3, len(cells)), device=device)
    out = spatial_pyramid_pool(fmaps, cells, (1, 2, 3, 6), batch_index=batch_index)
    expected = spatial_pyramid_pool_reference(fmaps, cells, (1, 2, 3, 6), batch_index=batch_index)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    all_third = spatial_pyramid_pool(fmaps, cells, batch_index=torch.full_like(batch_index, 2))
    assert torch.equal(spatial_pyramid_pool(fmaps[2], cells), all_third)


@pytest.mark.parametrize("device", DEVICES)
def test_bins_exact_where_roi_pool_float32_bins_are_not(device):
    # torchvision's roi_pool computes n×n bins as ceil(i · fl(w/n)) in float32: 7 · fl(57/7) = 57.000004,
    # so its last level-7 bin of a 57-cell window would take one cell past the window
    fmap = torch.rand(2, 13, 64, device=device)
    fmap[:, :, 57:] += 10  # cells right of the window dominate any bin that reaches them
    cells = torch.tensor([[0, 0, 56, 12], [0, 0, 12, 12], [3, 1, 59, 11]], device=device)
    out = spatial_pyramid_pool(fmap, cells, (7, 11, 13))
    torch.testing.assert_close(out, spatial_pyramid_pool_reference(fmap, cells, (7, 11, 13)), rtol=0, atol=0)
    assert out[0].max() < 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_are_kept(device, dtype):
    rng = np.random.default_rng(4)
    fmap = torch.rand(3, 7, 9, device=device).to(dtype)
    cells = random_cells(rng, 20, 7, 9).to(device)
    out = spatial_pyramid_pool(fmap, cells)
    assert out.dtype == dtype
    torch.testing.assert_close(out, spatial_pyramid_pool_reference(fmap, cells), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_no_windows(device):
    no_cells = torch.zeros(0, 4, dtype=torch.int64, device=device)
    out = spatial_pyramid_pool(torch.rand(4, 5, 5, device=device), no_cells)
    assert out.shape == (0, 200) and out.device.type == device


def test_rejects_cells_off_the_map():
    fmap = torch.rand(2, 5, 6)
    for bad in ([0, 0, 6, 4], [0, 0, 5, 5], [-1, 0, 2, 2], [3, 0, 2, 2], [0, 3, 2, 2]):
        with pytest.raises(ValueError, match="inside"):
            spatial_pyramid_pool(fmap, torch.tensor([bad]))
    with pytest.raises(ValueError, match="batch"):
        spatial_pyramid_pool(fmap, torch.tensor([[0, 0, 1, 1]]), batch_index=torch.tensor([1]))


@pytest.mark.parametrize("levels", [(1,), (5, 1), (1, 2, 3, 6)])
def test_deep_tables_and_chunks_match_reference(levels, monkeypatch):
    # whole-map windows need blocks of up to 32 cells; a tiny chunk size makes many chunks
    monkeypatch.setattr(spp, "_CHUNK_BYTES", {"cpu": 1 << 12})
    rng = np.random.default_rng(6)
    fmap = torch.randn(3, 37, 45)
    cells = random_cells(rng, 60, 37, 45)
    out = spatial_pyramid_pool(fmap, cells, levels)
    torch.testing.assert_close(out, spatial_pyramid_pool_reference(fmap, cells, levels), rtol=0, atol=0)


def test_large_outputs_equal_small_calls():
    # 64 channels × 50 bins × 3000 windows is 38 MB: allocated apart, with huge pages where available
    rng = np.random.default_rng(7)
    fmap = torch.rand(64, 30, 40)
    cells = random_cells(rng, 3000, 30, 40)
    whole = spatial_pyramid_pool(fmap, cells)
    assert whole.shape == (len(cells), 3200)
    assert torch.equal(whole, torch.cat([spatial_pyramid_pool(fmap, part) for part in cells.split(500)]))


@pytest.mark.parametrize("size", [(13, 13), (14, 14), (4, 5), (9, 31)])
def test_whole_map_pyramid_is_the_whole_map_window(size):
    height, width = size
    fmaps = torch.randn(3, 4, height, width)
    whole = torch.tensor([[0, 0, width - 1, height - 1]]).expand(3, 4)
    expected = spatial_pyramid_pool(fmaps, whole, (1, 2, 3, 6), batch_index=torch.arange(3))
    assert torch.equal(whole_map_pyramid_pool(fmaps, (1, 2, 3, 6)), expected)
