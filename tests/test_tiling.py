import numpy as np
import pytest

from core.tiling import TileGrid, TileStitcher, blend_weights, pad_tile


def stitch(image: np.ndarray, tile: int, overlap: int, model=lambda x: x) -> np.ndarray:
    """Run `model` on every (padded) tile and stitch the outputs back."""
    channels, height, width = image.shape
    grid = TileGrid(height, width, tile, overlap)
    stitcher = TileStitcher(grid, channels)
    out = np.full_like(image, np.nan)
    covered = np.zeros((height, width), dtype=int)
    for t in grid:
        pred = model(pad_tile(image[:, t.row:t.row + t.height, t.col:t.col + t.width], tile))
        row, col, block = stitcher.add(t, pred)
        out[:, row:row + block.shape[1], col:col + block.shape[2]] = block
        covered[row:row + block.shape[1], col:col + block.shape[2]] += 1
    assert (covered == 1).all(), "every pixel must be emitted exactly once"
    return out


@pytest.mark.parametrize("height,width", [(300, 517), (64, 64), (37, 200), (5, 3), (1, 1), (257, 256)])
@pytest.mark.parametrize("tile,overlap", [(64, 0), (64, 16), (128, 48), (32, 16), (32, 1)])
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


def test_grid_covers_raster_with_regular_steps():
    grid = TileGrid(1000, 700, 256, 32)
    tiles = list(grid)
    assert len(tiles) == len(grid) == grid.n_rows * grid.n_cols
    assert {t.row for t in tiles} == set(range(0, 1000 - 32, 224))
    last = tiles[-1]
    assert last.row + 256 >= 1000 and last.height == 1000 - last.row and last.width == 700 - last.col
    assert TileGrid(256, 256, 256, 32).n_rows == 1 and TileGrid(257, 10, 256, 32).n_rows == 2


def test_stitcher_memory_does_not_depend_on_raster_height():
    short, tall = (TileStitcher(TileGrid(h, 1000, 128, 16), 4) for h in (200, 20000))
    assert short.down.nbytes == tall.down.nbytes and short.right.nbytes == tall.right.nbytes
    assert short.down.shape[1] == 16  # only the overlap rows wait for the next tile row


def test_bad_overlap_is_explained():
    with pytest.raises(ValueError, match="Overlap"):
        TileGrid(100, 100, 64, 40)
