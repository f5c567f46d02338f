"""Tile grid with overlap and a strip stitcher that blends overlapping predictions.

Tiles are visited row by row. The stitcher keeps one tile-height strip of weighted sums
and hands back finished rows as soon as no later tile can touch them, so memory depends
on the tile size and raster width only, never on the raster height.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Tile:
    row: int      # top pixel row in the raster
    col: int      # left pixel column in the raster
    height: int   # pixels of the raster covered (<= tile size when the raster is smaller)
    width: int


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_weights(size: int, overlap: int) -> np.ndarray:
    """Separable ramp window (size x size), strictly positive, flat in the middle."""
    ramp = np.ones(size, dtype=np.float32)
    if overlap > 0:
        i = np.arange(size, dtype=np.float32)
        ramp = np.minimum(1.0, np.minimum(i + 1, size - i) / (overlap + 1))
    return np.outer(ramp, ramp)


class TileGrid:
    """Square tiles of `tile` pixels stepping by `tile - overlap`; the last tile in each
    direction is aligned to the raster edge so every tile lies inside the raster
    (rasters smaller than a tile get one tile, reflection-padded by `pad_tile`)."""

    def __init__(self, height: int, width: int, tile: int, overlap: int):
        if not 0 <= overlap < tile:
            raise ValueError(f"Overlap must be in [0, tile size); got overlap={overlap}, tile={tile}.")
        self.height, self.width, self.tile, self.overlap = height, width, tile, overlap
        stride = tile - overlap
        self.row_starts = _starts(height, tile, stride)
        self.col_starts = _starts(width, tile, stride)

    def rows(self) -> Iterator[list[Tile]]:
        """Tiles grouped by tile row, top to bottom."""
        for r in self.row_starts:
            yield [Tile(r, c, min(self.tile, self.height), min(self.tile, self.width))
                   for c in self.col_starts]

    def __len__(self) -> int:
        return len(self.row_starts) * len(self.col_starts)


def pad_tile(array: np.ndarray, tile: int) -> np.ndarray:
    """Reflection-pad (..., h, w) at the bottom/right up to (tile, tile)."""
    h, w = array.shape[-2:]
    if h == tile and w == tile:
        return array
    pad = [(0, 0)] * (array.ndim - 2) + [(0, tile - h), (0, tile - w)]
    mode = "reflect" if min(h, w) > 1 else "edge"
    return np.pad(array, pad, mode=mode)


class StripStitcher:
    """Blend per-tile predictions (channels, tile, tile) into finished row blocks.

    Feed the tile rows in order with `add_row`; each call returns (first_row, blended
    (channels, n, width)) for the rows no later tile can touch; the last call returns
    the rows down to the raster's bottom edge.
    """

    def __init__(self, grid: TileGrid, channels: int):
        self.grid = grid
        self.channels = channels
        self.weights = blend_weights(grid.tile, grid.overlap)
        self.strip_top = 0
        span = min(grid.tile, grid.height)
        self.sums = np.zeros((channels, span, grid.width), dtype=np.float32)
        self.wsum = np.zeros((span, grid.width), dtype=np.float32)
        self._next_rows = iter(grid.row_starts[1:] + [grid.height])

    def add_row(self, tiles: list[Tile], predictions: list[np.ndarray]) -> tuple[int, np.ndarray]:
        top = tiles[0].row
        self._shift_to(top)
        for tile, pred in zip(tiles, predictions):
            w = self.weights[:tile.height, :tile.width]
            sl = np.s_[:, tile.col:tile.col + tile.width]
            self.sums[(slice(None),) + sl] += pred[:, :tile.height, :tile.width] * w
            self.wsum[sl] += w
        done_until = next(self._next_rows)
        return self._emit(done_until)

    def _emit(self, until: int) -> tuple[int, np.ndarray]:
        n = until - self.strip_top
        out = self.sums[:, :n] / self.wsum[None, :n]
        return self.strip_top, out

    def _shift_to(self, top: int) -> None:
        """Move the strip down so it starts at `top`, keeping the overlapping rows."""
        shift = top - self.strip_top
        if shift <= 0:
            return
        keep = self.sums.shape[1] - shift
        if keep > 0:
            self.sums[:, :keep] = self.sums[:, shift:].copy()
            self.wsum[:keep] = self.wsum[shift:].copy()
        self.sums[:, max(keep, 0):] = 0
        self.wsum[max(keep, 0):] = 0
        self.strip_top = top
