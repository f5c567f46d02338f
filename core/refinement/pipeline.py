"""refine_raster: an image + a coarse classification raster -> a refined classification (IDGBR).

The classification is first scanned block by block for its distinct values, which are matched to
the model's classes (by value, or through a value map) before the model runs or anything is
written. Then tiles of both rasters are read window by window, the IDGBR sampler runs once per
sample and tile, and core.tiling.run_tiles blends the class probabilities (not argmaxes) across
overlapping tiles and writes each block as soon as no later tile touches it. The output keeps the
classification raster's grid, type, nodata, colour table and values: classes the classification
does not use are never chosen.

A refiner can make a map worse, so every run says how much it changed (overall and per class) and, given a
reference class raster on the same grid, scores the coarse and the refined map against it (mIoU, bIoU@3,
WFm@3, read block by block) and warns when the refined map scores lower.
"""
from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from rasterio.windows import Window

from core.catalog import resolve_model_dir
from core.checkpoint import ModelCard, load_card
from core.device import BatchRunner, describe_device, resolve_device
from core.pipeline import (PROBABILITY_NODATA, InputLayer, Output, check_inputs, check_outputs, check_tiling,
                           fit_layer, model_tiling, staged_outputs)
from core.metrics.boundary import BoundaryMetrics
from core.progress import Progress, SubProgress
from core.raster import GeoTiffWriter, RasterError, RasterInfo, open_raster, read_window
from core.refinement.model import GUIDANCE_SCALE, SAMPLING_STEPS, STRENGTH, TASK, load_refiner, refine, scale_image
from core.tiling import Tile, TileGrid, pad_tile, run_tiles

UNCERTAINTY_BANDS = ["entropy", "disagreement"]
SCAN_PIXELS = 1 << 22   # pixels per read while scanning the classification for its values
SCORE_BLOCK = 1024      # side of the blocks the reference scores are accumulated over
SCORED_METRICS = ("mIoU", "bIoU@3", "WFm@3")


@dataclass
class RefineParams:
    """Everything one run needs; plain values so panel, Processing, CLI and tests share it."""
    image_path: str
    classification_path: str
    output_path: str
    model_dir: str = ""                 # empty: the shipped starter model
    samples: int = 1                    # sampler runs per tile (different seeds), probabilities averaged
    steps: int = 0                      # DDIM steps; 0: the card's sampling_steps
    guidance_scale: float = 0.0         # 0: the card's guidance_scale
    strength: float = 0.0               # share of the DDIM chain, from the noised coarse map; 0: the card's
    max_entropy: float = 0.0            # keep the coarse class where the refined probabilities' entropy (0..1)
                                        # exceeds this; 0: the card's (none in the card: 1, no gate, the paper)
    uncertainty_path: str = ""          # optional float32 raster: entropy and disagreement bands
    value_map: dict[int, int] | None = None   # classification raster value -> model class value; None: by value
    bands: list[int] | None = None      # 1-based image bands; None: the first bands, in the card's order
    tile_size: int = 0                  # 0: the card's tile size
    overlap: int = 16
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    reference_path: str = ""            # optional class raster on the same grid: coarse vs refined scores
    image_layer_name: str = ""          # how the user knows the layers, for messages
    classification_layer_name: str = ""
    reference_layer_name: str = ""

    def resolved_model_dir(self) -> str:
        return resolve_model_dir(self.model_dir, TASK)


@dataclass
class RefineResult:
    output_path: str
    uncertainty_path: str
    device: str
    seconds: float
    tiles: int
    changed_fraction: float             # share of valid pixels whose class the refinement changed
    classes: list[dict]                 # the card's classes (asdict(ClassInfo))
    changed_by_class: dict[str, float] | None = None   # class name -> share of its coarse pixels that changed
    scores: dict[str, dict[str, float]] | None = None  # with a reference: {"coarse"|"refined": {metric: value}}


@dataclass
class ClassMapping:
    """How the classification raster's values and the model's classes correspond in one run."""
    raster_values: np.ndarray   # sorted distinct values of the classification's valid pixels
    class_of_value: np.ndarray  # the model class index of each of them
    output_values: np.ndarray   # per model class: the raster value its refined pixels get
    allowed: np.ndarray         # per model class: some raster value maps to it (the others are never chosen)

    def class_indices(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Raster values -> model class indices (0 where not valid)."""
        positions = np.clip(np.searchsorted(self.raster_values, values), 0, len(self.raster_values) - 1)
        return np.where(valid, self.class_of_value[positions], 0)

    def best_classes(self, scores: np.ndarray) -> np.ndarray:
        """(K, ...) per-class scores -> the index of the best allowed class."""
        allowed = self.allowed.reshape((-1,) + (1,) * (scores.ndim - 1))
        return np.argmax(np.where(allowed, scores, -np.inf), axis=0)


def refine_raster(params: RefineParams, progress: Progress | None = None) -> RefineResult:
    progress = progress or Progress()
    started = time.perf_counter()
    if params.samples < 1:
        raise ValueError(f"The number of samples must be at least 1; got {params.samples}.")
    image_name = params.image_layer_name or Path(params.image_path).name
    class_name = params.classification_layer_name or Path(params.classification_path).name
    outputs = [Output(params.output_path, "refined raster"), Output(params.uncertainty_path, "uncertainty raster")]
    reference_name = params.reference_layer_name or Path(params.reference_path).name
    inputs = {params.image_path: image_name, params.classification_path: class_name}
    check_outputs(outputs, {**inputs, params.reference_path: reference_name} if params.reference_path else inputs)
    check_tiling(params.tile_size, params.overlap)
    classification = InputLayer(params.classification_path, class_name, "classification")
    image = InputLayer(params.image_path, image_name, "image", tuple(params.bands or (1,)))
    layers = [classification, image] + ([InputLayer(params.reference_path, reference_name, "reference")]
                                        if params.reference_path else [])
    class_info, image_info, *reference_info = check_inputs(layers, progress)
    _check_same_grid(image_info, class_info, image_name, class_name, progress)
    if reference_info:
        _check_same_grid(reference_info[0], class_info, reference_name, class_name, progress, "Reference")
    model_dir = params.resolved_model_dir()
    card = load_card(model_dir, task=TASK)
    gate = change_gate(params, card)
    tile, overlap = model_tiling(params.tile_size, params.overlap, card, progress)
    bands = fit_layer(image, image_info, params.bands, card, progress)
    found = _distinct_values(params.classification_path, class_name, progress)
    mapping = _class_mapping(found, card, params.value_map, class_name, progress)
    reference_mapping = (_class_mapping(_distinct_values(params.reference_path, reference_name, progress), card,
                                        params.value_map, reference_name, Progress(), "Reference")
                         if params.reference_path else None)
    nodata = _output_nodata(class_info, found, class_name, progress)
    if class_info.crs_wkt is None:
        progress.warning(f"Layer '{class_name}' has no coordinate reference system: the refined raster "
                         "will have none either.")

    device = resolve_device(params.device)
    model, _ = load_refiner(model_dir, device)
    if tile % model.latent_factor:
        raise ValueError(f"Tile size {tile} px is not a multiple of {model.latent_factor} (the model's latent "
                         f"factor); use e.g. {max(1, round(tile / model.latent_factor)) * model.latent_factor}.")
    grid = TileGrid(class_info.height, class_info.width, tile, overlap)
    sampling = sampling_settings(params, card)
    runner = BatchRunner(model, device, progress)
    progress.info(f"Refining '{class_name}' with image '{image_name}' ({class_info.width} x {class_info.height} px, "
                  f"{len(grid)} tiles of {tile} px, {params.samples} sample(s) of {sampling['steps']} steps, "
                  f"guidance {sampling['guidance_scale']:g}, strength {sampling['strength']:g}"
                  + (f", changes kept where the entropy is <= {gate:g}" if gate < 1 else "")
                  + f") with '{card.name}' on {describe_device(device)}.")

    with staged_outputs(outputs) as staged:
        valid_by_class, changed_by_class = _refine_tiles(
            params, staged[params.output_path], staged[params.uncertainty_path], card, mapping, class_info, nodata,
            bands, grid, runner, sampling, gate, progress)
        scores = (_reference_scores(params.reference_path, params.classification_path, staged[params.output_path],
                                    reference_mapping, mapping, card, progress) if reference_mapping else None)
    seconds = time.perf_counter() - started
    changed_fraction = float(changed_by_class.sum() / max(valid_by_class.sum(), 1))
    by_class = {c.name: float(changed / valid) for c, valid, changed in zip(card.classes, valid_by_class,
                                                                           changed_by_class) if valid}
    progress.info(f"Done in {seconds:.1f} s on {runner.device.type}: the class of {100 * changed_fraction:.1f}% "
                  "of the valid pixels changed (" + ", ".join(f"{name} {100 * share:.1f}%"
                                                          for name, share in by_class.items()) + ").")
    if scores:
        _report_scores(scores, reference_name, progress)
    progress.set_fraction(1.0)
    return RefineResult(params.output_path, params.uncertainty_path, describe_device(runner.device), seconds,
                        len(grid), changed_fraction, [asdict(c) for c in card.classes], by_class, scores)


def change_gate(params: RefineParams, card: ModelCard) -> float:
    """The entropy above which a refined pixel keeps its coarse class: the run's, else the card's, else 1 (every
    change kept, the paper). A small refiner's uncertain edits break as many pixels as they fix; its confident ones
    fix more (the starter's card records the measurement)."""
    gate = params.max_entropy or float(card.extra.get("max_entropy", 1.0))
    if not 0 < gate <= 1:
        raise ValueError(f"The entropy gate (max_entropy) must be in (0, 1], got {gate:g}.")
    return gate


def sampling_settings(params: RefineParams, card: ModelCard) -> dict:
    """refine()'s steps, guidance_scale and strength: the run's where set, else the card's, else the paper's."""
    return {"steps": params.steps or int(card.extra.get("sampling_steps", SAMPLING_STEPS)),
            "guidance_scale": params.guidance_scale or float(card.extra.get("guidance_scale", GUIDANCE_SCALE)),
            "strength": params.strength or float(card.extra.get("strength", STRENGTH))}


def parse_value_map(text: str) -> dict[int, int] | None:
    """'3:1, 7:4' -> {3: 1, 7: 4} (classification raster value: model class value); '' -> None."""
    if not text.strip():
        return None
    mapping = {}
    for pair in re.split(r"[,;\n]", text):
        match = re.fullmatch(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*", pair)
        if match is None:
            raise ValueError(f"Cannot read the value map '{text}': expected 'raster value:model class value' "
                             "pairs separated by commas, e.g. '3:1, 7:4'.")
        raster_value, class_value = int(match[1]), int(match[2])
        if raster_value in mapping:
            raise ValueError(f"The value map '{text}' maps raster value {raster_value} twice.")
        mapping[raster_value] = class_value
    return mapping


# --- checks, all before the model runs or anything is written ----------------------------------------
def _check_same_grid(image: RasterInfo, classification: RasterInfo, image_name: str, class_name: str,
                     progress: Progress, kind: str = "Image") -> None:
    """Pixels are matched by position, so both rasters must have the same size."""
    if (image.width, image.height) != (classification.width, classification.height):
        raise RasterError(f"{kind} '{image_name}' is {image.width} x {image.height} px but classification "
                          f"'{class_name}' is {classification.width} x {classification.height} px; they must "
                          "have the same pixel grid (resample one onto the other first).")
    if image.crs_wkt != classification.crs_wkt or not np.allclose(image.transform, classification.transform):
        progress.warning(f"{kind} '{image_name}' and classification '{class_name}' have the same size but a "
                         "different coordinate reference system or georeferencing: pixels are matched by "
                         "position.")


def _distinct_values(path: str, name: str, progress: Progress) -> list[int]:
    """The distinct values of the valid pixels of band 1, read strip by strip (memory does not grow)."""
    found: set[float] = set()
    with open_raster(path) as src:
        rows = max(1, SCAN_PIXELS // src.width)
        for top in range(0, src.height, rows):
            data, valid = read_window(src, Window(0, top, src.width, min(rows, src.height - top)), [1])
            found.update(np.unique(data[0][valid]).tolist())
            progress.check()
    if not found:
        raise RasterError(f"Classification layer '{name}' has no valid pixels (all nodata).")
    fractional = sorted(v for v in found if v != int(v))
    if fractional:
        raise RasterError(f"Classification layer '{name}' has non-integer values (e.g. {fractional[0]:g}); "
                          "a classification raster holds class values.")
    return sorted(int(v) for v in found)


def _class_names(card: ModelCard) -> str:
    return ", ".join(f"{c.value} {c.name}" for c in card.classes)


def _class_mapping(found: list[int], card: ModelCard, value_map: dict[int, int] | None, name: str,
                   progress: Progress, kind: str = "Classification") -> ClassMapping:
    """Each raster value -> a model class: through the value map if it lists the value, else the class with
    that value. A value with neither is an error naming it and the model's classes."""
    index_of = {c.value: i for i, c in enumerate(card.classes)}
    value_map = value_map or {}
    bad_targets = sorted(f"{v}:{c}" for v, c in value_map.items() if c not in index_of)
    if bad_targets:
        raise ValueError(f"The value map for '{name}' maps to model class values the model '{card.name}' does "
                         f"not have ({', '.join(bad_targets)}); its classes are {_class_names(card)}.")
    class_values = [value_map.get(v, v) for v in found]
    unknown = [v for v, c in zip(found, class_values) if c not in index_of]
    if unknown:
        listed = ", ".join(str(v) for v in unknown)
        raise ValueError(f"{kind} layer '{name}' has value(s) {listed}, which the model '{card.name}' "
                         f"does not know (its classes are {_class_names(card)}). Give a value map from the "
                         f"layer's values to the model's, e.g. '{unknown[0]}:{card.classes[0].value}'.")
    class_of_value = np.asarray([index_of[c] for c in class_values])
    output_values = np.zeros(len(card.classes), dtype=np.float64)
    allowed = np.zeros(len(card.classes), dtype=bool)
    for value, k in zip(found, class_of_value):
        if allowed[k]:
            progress.info(f"Values {int(output_values[k])} and {value} of '{name}' both map to class "
                          f"'{card.classes[k].name}': refined pixels of that class get {int(output_values[k])}.")
            continue
        output_values[k], allowed[k] = value, True
    return ClassMapping(np.asarray(found, dtype=np.float64), class_of_value, output_values, allowed)


def _output_nodata(info: RasterInfo, found: list[int], name: str, progress: Progress) -> float:
    """The classification's nodata value, or, if it has none, a value it does not use (image nodata needs one)."""
    if info.nodata is not None:
        return info.nodata
    if np.issubdtype(np.dtype(info.dtype), np.floating):
        return float("nan")
    limits, used = np.iinfo(info.dtype), set(found)
    nodata = next((v for v in range(limits.max, limits.min - 1, -1) if v not in used), None)
    if nodata is None:
        raise RasterError(f"Classification layer '{name}' uses every {info.dtype} value and has no nodata value, "
                          "so the refined raster has no value left for image nodata.")
    progress.info(f"Classification layer '{name}' has no nodata value; the refined raster uses {nodata}.")
    return float(nodata)


# --- the tile loop -------------------------------------------------------------------------------------
def _refine_tiles(params: RefineParams, output_path: str, uncertainty_path: str, card: ModelCard,
                  mapping: ClassMapping, info: RasterInfo, nodata: float, bands: list[int], grid: TileGrid,
                  runner: BatchRunner, sampling: dict, gate: float,
                  progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Refine and write every tile; returns per model class its valid coarse pixels and how many of them changed.
    A pixel whose refined probabilities' normalised entropy exceeds `gate` keeps its coarse class.

    Blended channels: the mean class probabilities of the samples (K) and, for the uncertainty raster,
    each class's share of the samples' argmaxes (K).
    """
    n_classes, samples = len(card.classes), params.samples
    chain = max(1, round(sampling["strength"] * sampling["steps"]))
    calls = math.ceil(len(grid) / params.batch_size) * samples * chain   # the whole run's, for the CPU fast path
    with_votes = bool(uncertainty_path)
    common = dict(width=info.width, height=info.height, crs_wkt=info.crs_wkt, transform=info.transform)
    valid_by_class, changed_by_class = np.zeros(n_classes, np.int64), np.zeros(n_classes, np.int64)

    def read_tile(tile: Tile):
        window = Window(tile.col, tile.row, tile.width, tile.height)
        raw, image_valid = read_window(image_src, window, bands)
        values, class_valid = read_window(class_src, window, [1])
        image = scale_image(torch.from_numpy(raw[None]), card)[0].numpy()
        image = np.where(image_valid, image, 0.0).astype(np.float32)
        coarse = mapping.class_indices(values[0], class_valid)
        return (pad_tile(image, grid.tile), pad_tile(coarse, grid.tile)), image_valid & class_valid

    def predict(tiles: list[Tile], inputs: list) -> np.ndarray:
        images = torch.from_numpy(np.stack([image for image, _ in inputs]))
        coarse = torch.from_numpy(np.stack([labels for _, labels in inputs]))
        first = tiles[0].i * grid.n_cols + tiles[0].j   # the grid-order number of the batch's first tile
        batch_progress = SubProgress(progress, first / len(grid), (first + len(tiles)) / len(grid))

        def forward(model, rows):
            # BatchRunner hands over the batch rows to run (fewer after a GPU out-of-memory): seeds follow
            # the chunk's first tile, so every tile and sample gets its own noise.
            rows = rows.cpu()
            seed = params.seed + (first + int(rows[0])) * samples
            probabilities, votes = 0.0, 0.0
            for s in range(samples):
                p = refine(model, images[rows], coarse[rows], seed=seed + s, calls=calls,
                           progress=SubProgress(batch_progress, s / samples, (s + 1) / samples), **sampling).cpu()
                probabilities = probabilities + p / samples
                if with_votes:
                    best = torch.from_numpy(mapping.best_classes(p.numpy().transpose(1, 0, 2, 3)))
                    votes = votes + torch.nn.functional.one_hot(best, n_classes).permute(0, 3, 1, 2) / samples
            return torch.cat([probabilities, votes], dim=1) if with_votes else probabilities

        return runner(torch.arange(len(tiles)), forward).numpy()

    def write_block(row: int, col: int, block: np.ndarray, valid: np.ndarray) -> None:
        probabilities = block[:n_classes]
        p = np.clip(probabilities, 1e-12, 1.0)
        entropy = np.clip(-(p * np.log(p)).sum(axis=0) / math.log(n_classes), 0.0, 1.0)
        values, class_valid = read_window(class_check_src, Window(col, row, *entropy.shape[::-1]), [1])
        coarse = mapping.class_indices(values[0], class_valid)
        best = mapping.best_classes(probabilities)
        if gate < 1:
            best = np.where(entropy <= gate, best, coarse)
        class_out.write(np.where(valid, mapping.output_values[best], nodata), row=row, col=col)
        valid_by_class[:] += np.bincount(coarse[valid], minlength=n_classes)
        changed_by_class[:] += np.bincount(coarse[valid & (coarse != best)], minlength=n_classes)
        if with_votes:
            agreement = np.take_along_axis(block[n_classes:], best[None], axis=0)[0]
            bands_out = np.stack([entropy, np.clip(1.0 - agreement, 0.0, 1.0)])
            uncertainty_out.write(np.where(valid, bands_out, PROBABILITY_NODATA), row=row, col=col)

    with contextlib.ExitStack() as stack:
        image_src = stack.enter_context(open_raster(params.image_path))
        class_src = stack.enter_context(open_raster(params.classification_path))   # read by the reader thread
        class_check_src = stack.enter_context(open_raster(params.classification_path))  # by this thread
        class_out = stack.enter_context(GeoTiffWriter(
            output_path, count=1, dtype=info.dtype, nodata=nodata, colormap=_colormap(class_src),
            band_names=["class"], **common))
        if with_votes:
            uncertainty_out = stack.enter_context(GeoTiffWriter(
                uncertainty_path, count=2, dtype="float32", nodata=PROBABILITY_NODATA,
                band_names=UNCERTAINTY_BANDS, **common))
        channels = 2 * n_classes if with_votes else n_classes
        run_tiles(grid, channels, read_tile, predict, write_block, params.batch_size, progress)
    return valid_by_class, changed_by_class


# --- scores against a reference ----------------------------------------------------------------------------
def _reference_scores(reference_path: str, coarse_path: str, refined_path: str, reference: ClassMapping,
                      mapping: ClassMapping, card: ModelCard, progress: Progress) -> dict[str, dict[str, float]]:
    """Coarse and refined maps against the reference, block by block (memory does not grow with the raster);
    both count the same pixels: valid in the reference and in the refined map."""
    names = [c.name for c in card.classes]
    metrics = {"coarse": BoundaryMetrics(names, ignore=-1), "refined": BoundaryMetrics(names, ignore=-1)}
    with open_raster(reference_path) as ref_src, open_raster(coarse_path) as coarse_src, \
            open_raster(refined_path) as refined_src:
        for top in range(0, ref_src.height, SCORE_BLOCK):
            for left in range(0, ref_src.width, SCORE_BLOCK):
                window = Window(left, top, min(SCORE_BLOCK, ref_src.width - left),
                                min(SCORE_BLOCK, ref_src.height - top))
                (truth, truth_valid), (coarse, coarse_valid), (refined, refined_valid) = (
                    read_window(src, window, [1]) for src in (ref_src, coarse_src, refined_src))
                counted = truth_valid & coarse_valid & refined_valid
                truth_ids = np.where(counted, reference.class_indices(truth[0], counted), -1)
                for source, values in (("coarse", coarse), ("refined", refined)):
                    metrics[source].add(mapping.class_indices(values[0], counted), truth_ids)
                progress.check()
    return {source: {m: float(result[m]) for m in SCORED_METRICS}
            for source, result in ((s, m.result()) for s, m in metrics.items())}


def _report_scores(scores: dict[str, dict[str, float]], reference_name: str, progress: Progress) -> None:
    coarse, refined = scores["coarse"], scores["refined"]
    progress.info(f"Against the reference '{reference_name}': " + ", ".join(
        f"{m} {coarse[m]:.4f} -> {refined[m]:.4f} ({refined[m] - coarse[m]:+.4f})" for m in SCORED_METRICS) + ".")
    worse = [m for m in SCORED_METRICS if refined[m] < coarse[m]]
    if worse:
        progress.warning(f"The refined map scores lower than the classification against the reference "
                         f"'{reference_name}' ({', '.join(worse)}): on this data the coarse classification is the "
                         "better map.")


def _colormap(src) -> dict[int, tuple[int, int, int, int]] | None:
    """The classification's colour table, copied to the refined raster (None if it has none)."""
    try:
        return src.colormap(1)
    except ValueError:
        return None
