import numpy as np
import pytest

from core.tiling import StripStitcher, TileGrid, blend_weights, pad_tile


def stitch(image: np.ndarray, tile: int, overlap: int, model=lambda x: x) -> np.ndarray:
    """Run `model` on every (padded) tile and stitch the outputs back."""
    channels, height, width = image.shape
    grid = TileGrid(height, width, tile, overlap)
    stitcher = StripStitcher(grid, channels)
    out = np.full_like(image, np.nan)
    covered = np.zeros((height, width), dtype=int)
    for tiles in grid.rows():
        preds = [model(pad_tile(image[:, t.row:t.row + t.height, t.col:t.col + t.width], tile)) for t in tiles]
        row0, strip = stitcher.add_row(tiles, preds)
        out[:, row0:row0 + strip.shape[1]] = strip
        covered[row0:row0 + strip.shape[1]] += 1
    assert (covered == 1).all(), "every row must be emitted exactly once"
    return out


@pytest.mark.parametrize("height,width", [(300, 517), (64, 64), (37, 200), (5, 3), (1, 1), (257, 256)])
@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 16), (128, 48), (32, 31)])
def test_identity_model_reproduces_input(height, width, tile, overlap):
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.normal(size=(3, height, width)).astype(np.float32)
    np.testing.assert_allclose(stitch(image, tile, overlap), image, rtol=1e-5, atol=1e-5)


def test_blended_weights_sum_to_one():
    """Normalised blend weights of all tiles covering a pixel sum to one everywhere."""
    ones = np.ones((1, 211, 333), dtype=np.float32)
    np.testing.assert_allclose(stitch(ones, 64, 24), 1.0, rtol=1e-6)


def test_overlap_is_blended_not_pasted():
    """Tiles predicting different constants give a smooth ramp, not a seam, in the overlap."""
    counter = iter(range(1000))
    out = stitch(np.zeros((1, 64, 112), dtype=np.float32), 64, 16,
                 model=lambda x: np.full_like(x, float(next(counter))))
    row = out[0, 32]
    assert row[0] == 0 and row[-1] == 1
    assert np.all(np.diff(row) >= 0) and len(np.unique(row)) > 5


def test_weights_positive_and_flat_centre():
    w = blend_weights(64, 16)
    assert w.min() > 0 and w[32, 32] == 1.0 and w[0, 0] < w[8, 8]


def test_grid_covers_raster_with_edge_aligned_tiles():
    grid = TileGrid(1000, 700, 256, 32)
    assert grid.row_starts[0] == 0 and grid.row_starts[-1] == 1000 - 256
    assert grid.col_starts[-1] == 700 - 256
    assert all(b - a <= 224 for a, b in zip(grid.row_starts, grid.row_starts[1:]))


def test_bad_overlap_is_explained():
    with pytest.raises(ValueError, match="Overlap"):
        TileGrid(100, 100, 64, 64)
