"""Tile grid with overlap and a stitcher that blends overlapping predictions.

Tiles step regularly by `tile - overlap` from the top-left corner; tiles that run past the
bottom or right edge are reflection-padded. Tiles are stitched in row-major order and each
one hands back its finished part at once, so the stitcher only keeps what is still
waiting for a neighbour: the right-hand overlap of the previous tile and the bottom
overlap of the previous tile row (`overlap` rows). Memory therefore does not depend on the
raster height, and only those `overlap` rows depend on its width.

`run_tiles` is the loop every raster pipeline shares: read a batch of tiles on a worker
thread while the model runs on the previous one, blend the predictions with a validity
channel, and hand each finished block to the caller for writing.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.progress import Progress


@dataclass(frozen=True)
class Tile:
    i: int        # tile row index
    j: int        # tile column index
    row: int      # top pixel row in the raster
    col: int      # left pixel column in the raster
    height: int   # raster pixels inside the tile (< tile size at the bottom edge)
    width: int


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """Separable ramp window (size x size), strictly positive, flat in the middle."""
    ramp = np.ones(size, dtype=np.float32)
    if overlap > 0:
        i = np.arange(size, dtype=np.float32)
        ramp = np.minimum(1.0, np.minimum(i + 1, size - i) / (overlap + 1))
    return np.outer(ramp, ramp)


def _count(length: int, tile: int, stride: int) -> int:
    return max(1, math.ceil((length - (tile - stride)) / stride))


class TileGrid:
    """Square tiles of `tile` pixels stepping by `tile - overlap` (overlap <= tile / 2)."""

    def __init__(self, height: int, width: int, tile: int, overlap: int):
        if not 0 <= overlap <= tile // 2:
            raise ValueError(f"Overlap must be between 0 and half the tile size; got overlap={overlap}, tile={tile}.")
        self.height, self.width, self.tile, self.overlap = height, width, tile, overlap
        self.stride = tile - overlap
        self.n_rows = _count(height, tile, self.stride)
        self.n_cols = _count(width, tile, self.stride)

    def __iter__(self) -> Iterator[Tile]:
        for i in range(self.n_rows):
            for j in range(self.n_cols):
                row, col = i * self.stride, j * self.stride
                yield Tile(i, j, row, col, min(self.tile, self.height - row), min(self.tile, self.width - col))

    def __len__(self) -> int:
        return self.n_rows * self.n_cols


def pad_tile(array: np.ndarray, tile: int) -> np.ndarray:
    """Reflection-pad (..., h, w) at the bottom/right up to (tile, tile)."""
    h, w = array.shape[-2:]
    if h == tile and w == tile:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, tile - h), (0, tile - w)]
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(array, pad, mode=mode)


class TileStitcher:
    """Blend per-tile predictions (channels, tile, tile) given in the grid's order.

    `add` returns (row, col, blended (channels, h, w)): the block of the raster that no
    later tile touches. Every raster pixel is returned exactly once.
    """

    def __init__(self, grid: TileGrid, channels: int):
        self.grid = grid
        t, o = grid.tile, grid.overlap
        self.weights = blend_weights(t, o)
        padded_width = (grid.n_cols - 1) * grid.stride + t
        self.down = np.zeros((channels + 1, o, padded_width), np.float32)   # last channel: weight sums
        self.next_down = np.zeros_like(self.down)
        self.right = np.zeros((channels + 1, t, o), np.float32)

    def add(self, tile: Tile, prediction: np.ndarray) -> tuple[int, int, np.ndarray]:
        g, s, o, t = self.grid, self.grid.stride, self.grid.overlap, self.grid.tile
        acc = np.concatenate([prediction * self.weights, self.weights[None]])
        if tile.j > 0 and o:
            acc[:, :, :o] += self.right
        if tile.i > 0 and o:
            skip = o if tile.j > 0 else 0      # those columns came in with the right-hand carry
            acc[:, :o, skip:] += self.down[:, :, tile.col + skip:tile.col + t]
        last_row, last_col = tile.i == g.n_rows - 1, tile.j == g.n_cols - 1
        if not last_col and o:
            self.right = acc[:, :, s:].copy()
        if not last_row and o:
            keep = t if last_col else s
            self.next_down[:, :, tile.col:tile.col + keep] = acc[:, s:, :keep]
        if last_col:
            self.down, self.next_down = self.next_down, self.down
        h = tile.height if last_row else s
        w = tile.width if last_col else s
        block = acc[:-1, :h, :w] / acc[-1:, :h, :w]
        return tile.row, tile.col, block


def tile_batches(grid: TileGrid, size: int) -> Iterator[list[Tile]]:
    """The grid's tiles in order, `size` at a time (the last batch may be shorter)."""
    batch = []
    for tile in grid:
        batch.append(tile)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_tiles(grid: TileGrid, channels: int, read_tile: Callable[[Tile], tuple[Any, np.ndarray]],
              predict: Callable[[list[Tile], list[Any]], np.ndarray],
              write_block: Callable[[int, int, np.ndarray, np.ndarray], None],
              batch_size: int, progress: Progress) -> None:
    """Predict every tile of `grid`, blend the overlaps and write the raster block by block.

    read_tile(tile) -> (inputs, valid): the tile's model inputs, padded to the tile size, and its
        pixel validity (tile.height, tile.width). Runs on a worker thread, one batch ahead of the model.
    predict(tiles, inputs) -> (len(tiles), channels, tile, tile) predictions to blend (probabilities,
        not labels: blending averages them).
    write_block(row, col, block, valid): a finished block (channels, h, w) of blended predictions at
        raster pixel (row, col) and where it is valid (more than half of its blended validity).
    progress.step runs after each batch, so a cancelled run stops there.
    """
    stitcher = TileStitcher(grid, channels + 1)  # the last channel carries pixel validity

    def read_batch(tiles: list[Tile]):
        inputs, valids = [], []
        for tile in tiles:
            tile_inputs, valid = read_tile(tile)
            inputs.append(tile_inputs)
            valids.append(pad_tile(valid[None].astype(np.float32), grid.tile))
        return tiles, inputs, valids

    batches = tile_batches(grid, batch_size)
    done = 0
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read_batch, next(batches))
        while pending is not None:
            tiles, inputs, valids = pending.result()
            upcoming = next(batches, None)
            pending = reader.submit(read_batch, upcoming) if upcoming else None
            predictions = predict(tiles, inputs)
            for tile, prediction, valid in zip(tiles, predictions, valids):
                row, col, block = stitcher.add(tile, np.concatenate([prediction, valid]))
                write_block(row, col, block[:channels], block[channels] > 0.5)
            done += len(tiles)
            progress.step(done, len(grid))
