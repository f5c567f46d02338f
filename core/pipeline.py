"""The skeleton every raster pipeline shares (segment, oil spills, change, refine, fuse).

A run first checks where it will write (`check_outputs`), before any model is loaded, so a bad
file name costs the user no waiting. It then writes every output under its own name inside a
hidden staging folder next to it (`staged_outputs`) and moves the whole set into place only when
the run has finished: a failed or cancelled run leaves no partial file, no half set of outputs,
and the files an earlier run wrote at those paths untouched. `core.tiling.run_tiles` is the tile
loop in between.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.checkpoint import ModelCard
from core.raster import RasterError

PROBABILITY_NODATA = -1.0     # float rasters of values in [0, 1] (probabilities, weights, uncertainties)
RASTER_SUFFIXES = (".tif", ".tiff")
POLYGON_SUFFIX = ".gpkg"


@dataclass(frozen=True)
class Output:
    """One file a run may write."""
    path: str                   # '' when the user did not ask for it
    what: str                   # how messages name it, e.g. "probability raster", "oil-slick polygons"
    polygons: bool = False      # a GeoPackage of polygons (core.vector.polygonize), else a GeoTIFF


def class_raster_dtype(card: ModelCard) -> tuple[str, int]:
    """Smallest unsigned type holding every class value, and a nodata value outside them."""
    top = max((c.value for c in card.classes), default=0)
    return ("uint8", 255) if top < 255 else ("uint16", 65535)


def check_outputs(outputs: Sequence[Output], inputs: dict[str, str]) -> None:
    """Refuse outputs that would overwrite an input or each other, have the wrong file type or cannot be
    written, with a message naming the output. The first output is the run's main one and needs a name.
    inputs: input path -> how the user knows that layer."""
    if not outputs[0].path:
        raise ValueError(f"Choose a file name for the {outputs[0].what}.")
    input_names = {Path(path).resolve(): name for path, name in inputs.items()}
    taken: dict[Path, str] = {}
    for out in outputs:
        if not out.path:
            continue
        path = Path(out.path).resolve()
        if path in input_names:
            raise RasterError(f"The {out.what} '{out.path}' is the input layer '{input_names[path]}'; choose "
                              "another file name.")
        if path in taken:
            raise ValueError(f"The {taken[path]} and the {out.what} are both '{out.path}'; choose two file names.")
        taken[path] = out.what
        if out.polygons and path.suffix.lower() != POLYGON_SUFFIX:
            raise ValueError(f"The {out.what} are written as a GeoPackage: use a .gpkg file name, not '{out.path}'.")
        if not out.polygons and path.suffix.lower() not in RASTER_SUFFIXES:
            raise ValueError(f"The {out.what} is written as a GeoTIFF: use a .tif file name, not '{out.path}'.")
        if path.is_dir():
            raise ValueError(f"The {out.what} '{out.path}' is a folder; choose a file name.")
        folder = next(p for p in path.parents if p.exists())   # the output's folder or the ancestor it goes in
        if not folder.is_dir():
            raise ValueError(f"The {out.what} '{out.path}' cannot be written: '{folder}' is a file, not a folder.")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"The {out.what} '{out.path}' cannot be written: folder '{folder}' is not writable.")


class StagedPaths:
    """Where a run writes instead of its final paths, and scratch files it never keeps."""

    def __init__(self, partial_of: dict[str, str], scratch_folder: Path):
        self._partial_of = partial_of
        self._scratch_folder = scratch_folder

    def __getitem__(self, final: str) -> str:
        """The path to write the output `final` to ('' for an output not asked for)."""
        return self._partial_of[final] if final else ""

    def scratch(self, name: str) -> str:
        """A file the run needs on the way (e.g. a probability raster the polygons read), removed at the end."""
        folder = self._scratch_folder / ".scratch"   # apart from the outputs, which may have the same name
        folder.mkdir(exist_ok=True)
        return str(folder / name)


@contextlib.contextmanager
def staged_outputs(outputs: Sequence[Output]) -> Iterator[StagedPaths]:
    """Stage the outputs asked for; move them all into place when the block succeeds, else remove them
    (and the folders made for them)."""
    finals = {out.path: Path(out.path) for out in outputs if out.path}
    made = [p for folder in {f.parent.absolute() for f in finals.values()} for p in (folder, *folder.parents)
            if not p.exists()]
    staging: dict[Path, Path] = {}   # output folder -> its staging folder
    done = False
    try:
        for final in finals.values():
            if final.parent not in staging:
                final.parent.mkdir(parents=True, exist_ok=True)
                staging[final.parent] = Path(tempfile.mkdtemp(prefix=".", suffix=".partial", dir=final.parent))
        yield StagedPaths({path: str(staging[final.parent] / final.name) for path, final in finals.items()},
                          next(iter(staging.values())))
        for final in finals.values():
            os.replace(staging[final.parent] / final.name, final)
        done = True
    finally:
        for folder in staging.values():
            shutil.rmtree(folder, ignore_errors=True)
        if not done:
            for folder in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):   # kept when something else has appeared in it
                    folder.rmdir()
