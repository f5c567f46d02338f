"""Fit a model to the user's own layers: the one call behind rsdiffusion:train_*, `python -m training finetune`
and the dock's Train tab.

    fit_to_layers(FitParams(task, image_path, labels_path, output_model, ...), progress) -> FitResult

1. Checks before anything is trained: the base model (the task's starter, a model folder, or "scratch"), the
   layers, the labels (they must reach the image; a class field must exist and hold values).
2. The layers are cut into non-overlapping patches (core.data.training_set) in a run folder next to the output
   (`.<name>.fit/`); pixels outside the labelled polygons, label nodata and image nodata are ignored by the loss.
3. Spatial hold-out: a contiguous block of patch rows (the lowest one that leaves every class an example to
   train on; never overlapping a training patch) is kept for validation; every class must still have examples in
   the training part.
4. Fine-tuning through the existing trainers with `init_from` (training.transfer: encoder and decoder from the
   base, a new head when the classes differ, rows of classes of the same name kept; a first convolution
   re-initialised when the band count differs), normalisation from the user's data (band statistics; SAR: the
   scene's stretch; change: one stretch for both dates), class-weighted cross-entropy for rare classes
   (segmentation, change; SAROSS-Net's loss has a soft Dice term that weighs classes equally).
5. The base model and the fine-tuned one are scored on the held-out blocks; the model folder is written with a
   card that records the base model, the training layers, classes, normalisation and both scores.

Progress: loss lines "step N/M: loss X" and "validation at step N: ..." reach `progress.info`; FitParams.on_step
receives the same numbers (step, {"loss": x} or the validation scores) for a live curve. Cancel: the training
state of the last finished step is kept in the run folder; the same call again goes on from it (a run whose
layers or settings changed starts over). Ground resolution: the model is trained at the image's own resolution;
the log says how it compares to the base model's.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.catalog import resolve_model_dir
from core.checkpoint import ClassInfo, ModelCard, load_card, load_into, load_weights, save_model
from core.data.folder import IGNORE_INDEX, read_class_table, write_class_table
from core.data.training_set import (LABEL_NODATA, PALETTE, VECTOR_SUFFIXES, ChangeTrainingSetParams, TrainingSetParams,
                                    build_change_training_set, build_training_set)
from core.device import resolve_device
from core.progress import Progress, SubProgress
from core.raster import RasterError, open_raster, raster_info
from training.monitor import StepCallback, TrainingMonitor
from training.trainer import STATE_NAME, TrainingError

TASKS = {"segmentation": "segmentation", "oilspill": "saross", "change": "changedet"}   # FitParams.task: card task
SCRATCH = "scratch"
# Sized on the 2-core CPU this project targets, measured while other jobs shared it (load ~5): 2.4 s
# (segmentation), 3.4 s (SAROSS-Net) and 1.3 s (change) per step of 4 patches of 128 px, validations included,
# plus 10-20 s to cut the patches and score: a default run takes about 6.5, 7 and 6.5 minutes (less on an idle
# machine, seconds on CUDA). A time budget (FitParams.time_budget_minutes) caps it for sure.
DEFAULT_STEPS = {"segmentation": 160, "oilspill": 120, "change": 300}
DEFAULT_BATCH = {"segmentation": 4, "oilspill": 4, "change": 4}
# oil spills: 2e-4 left the starter almost unchanged in 120 steps (bench finetune: oil IoU 0.273 vs 0.276)
DEFAULT_LR = {"segmentation": 5e-4, "oilspill": 1e-3, "change": 5e-4}
SCRATCH_LR_FACTOR = 4          # from random weights the rate is this much higher
MIN_LABELLED_FRACTION = 0.02   # a patch with fewer labelled pixels than this share is not written
PATCH_NAME = re.compile(r"_r(\d+)_c(\d+)\.tif$")
DATA_FOLDERS = {"segmentation": ("images", "masks"), "oilspill": ("images", "masks"), "change": ("A", "B", "label")}


@dataclass
class FitParams:
    task: str                          # segmentation | oilspill | change
    image_path: str                    # the image (change: date A)
    labels_path: str                   # class raster, or polygons with class_field (change: change raster or polygons)
    output_model: str                  # the model folder to write
    image_b_path: str = ""             # change: date B (resampled onto A's grid when the grids differ)
    class_field: str = ""              # polygons: the attribute holding class values or names (not for change)
    labels_layer: str = ""             # layer inside a multi-layer vector file
    base_model: str = ""               # empty: the task's starter; a model folder or name; "scratch": random weights
    encoder: str = ""                  # scratch only: an smp / timm ("tu-...") encoder; empty: the starter's
    name: str = ""                     # the card's name; empty: the output folder's name
    steps: int = 0                     # optimiser steps; 0: DEFAULT_STEPS of the task
    time_budget_minutes: float = 0.0   # 0: none; else training stops (validated, saved) when it is spent
    patch_size: int = 128
    batch_size: int = 0                # 0: DEFAULT_BATCH of the task
    lr: float = 0.0                    # 0: DEFAULT_LR of the task (x SCRATCH_LR_FACTOR from scratch)
    val_fraction: float = 0.2          # share of patch rows held out (at least one row)
    band: int = 1                      # oil spills: the SAR band
    land_mask_path: str = ""           # oil spills: land polygons, left out of training (as detect_oil_spills does)
    land_mask_layer: str = ""          # layer inside a multi-layer land-mask file
    synthetic: str = ""                # oil: generated pairs with soft labels (DAKD); change: generated A/B/label
    device: str = "auto"
    seed: int = 0
    on_step: StepCallback | None = field(default=None, repr=False, compare=False)


@dataclass
class FitResult:
    model_dir: str
    base_model: str                    # the base card's name, or "scratch"
    base_scores: dict[str, float]      # the base model on the held-out blocks ({} from scratch or without hold-out)
    scores: dict[str, float]           # the fine-tuned model on the same pixels
    steps: int
    seconds: float
    train_patches: int
    holdout_patches: int
    notes: list[str]
    stopped_early: bool = False        # the time budget ended training before `steps`


def fit_to_layers(params: FitParams, progress: Progress | None = None) -> FitResult:
    progress = progress or Progress()
    started = time.monotonic()
    params = _with_defaults(params)
    base_dir, base = _base_model(params)
    output = Path(params.output_model)
    run = output.parent / f".{output.name}.fit"
    resume = _prepare_run(run, params, base_dir)
    info = raster_info(params.image_path)
    data, holdout = run / "patches", run / "holdout"
    try:
        notes = _check_layers(params, base, info)
        progress.info("Cutting the layers into training patches...")
        _build_patches(params, base, data, SubProgress(progress, 0.0, 0.08))
        notes += _hold_out(params, data, holdout)
        classes = _class_table(params, base, data, holdout)
        weights = _check_training_part(params, data, classes)
    except Exception:
        if not resume:      # refused (or cancelled) before training: nothing worth keeping
            shutil.rmtree(run, ignore_errors=True)
        raise
    for note in notes:
        progress.info(note)
    monitor = TrainingMonitor(SubProgress(progress, 0.08, 0.95), params.on_step,
                              params.time_budget_minutes * 60, report_every=max(1, params.steps // 50))
    cfg, train = _trainer(params, base_dir, run, data, holdout, weights, resume)
    progress.info(f"Training {params.steps} steps of {params.batch_size} patches of {params.patch_size} px on "
                  f"{resolve_device(params.device).type.upper()} ({'from ' + base.name if base else 'from scratch'}"
                  f"{', resuming' if resume else ''}).")
    trained_dir = train(cfg, monitor)
    card = load_card(trained_dir)
    progress.info("Scoring the base and the fine-tuned model on the held-out blocks...")
    has_holdout = _count(holdout, params.task) > 0
    scores = _score(params, trained_dir, card, holdout, classes) if has_holdout else {}
    base_scores = {}
    if has_holdout and base is not None:
        try:
            base_scores = _score(params, base_dir, base, holdout, classes)
        except _NotComparable as exc:
            notes.append(str(exc))
    notes += card.extra.get("init_notes", [])
    card = _final_card(params, card, base, info, scores, base_scores, notes, cfg)
    save_model(output, card, load_weights(trained_dir))
    progress.set_fraction(1.0)
    seconds = time.monotonic() - started
    progress.info(f"Model '{card.name}' written to {output} in {seconds:.0f} s: "
                  + _compare(scores, base_scores, params.task))
    return FitResult(str(output), base.name if base else SCRATCH, base_scores, scores, int(card.extra["steps"]),
                     seconds, _count(data, params.task), _count(holdout, params.task), notes, monitor.stopped_early)


# --- checks -----------------------------------------------------------------------------------------------

def _with_defaults(params: FitParams) -> FitParams:
    if params.task not in TASKS:
        raise TrainingError(f"Unknown task '{params.task}'; choose one of {', '.join(TASKS)}.")
    for label, path in (("Image", params.image_path), ("Labels", params.labels_path)) + (
            (("Image B", params.image_b_path),) if params.task == "change" else ()):
        if not path:
            raise TrainingError(f"{label}: no layer given.")
        if not Path(path).is_file():
            raise TrainingError(f"{label} '{path}' does not exist.")
    output = Path(params.output_model) if params.output_model else None
    if output is None:
        raise TrainingError("Output model: give a folder for the new model.")
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / "model.json").is_file())):
        raise TrainingError(f"Output model '{output}' exists and is not a model folder: choose a new or empty "
                            "folder (a model folder there is replaced).")
    if params.patch_size < 32 or params.patch_size % 32:
        raise TrainingError(f"Patch size must be a multiple of 32 (at least 32), not {params.patch_size}.")
    if not 0 <= params.val_fraction < 1:
        raise TrainingError(f"Held-out share must be between 0 and 1, not {params.val_fraction}.")
    lr = params.lr or DEFAULT_LR[params.task] * (SCRATCH_LR_FACTOR if params.base_model == SCRATCH else 1)
    params = dataclasses.replace(params, steps=params.steps or DEFAULT_STEPS[params.task],
                                 batch_size=params.batch_size or DEFAULT_BATCH[params.task], lr=lr,
                                 name=params.name or Path(params.output_model).name)
    if params.steps < 1 or params.batch_size < 1:
        raise TrainingError("Steps and batch size must be at least 1.")
    return params


def _base_model(params: FitParams) -> tuple[str, ModelCard | None]:
    """(folder, card) of the model to start from; ("", None) from scratch. Another task's model is refused."""
    if params.base_model == SCRATCH:
        return "", None
    base_dir = resolve_model_dir(params.base_model, TASKS[params.task])
    card = load_card(base_dir, task=TASKS[params.task])
    if Path(base_dir).resolve() == Path(params.output_model).resolve():
        raise TrainingError(f"The output model folder is the base model '{card.name}': choose a new folder, the "
                            "base model is kept as it is.")
    return base_dir, card


def _check_layers(params: FitParams, base: ModelCard | None, info) -> list[str]:
    """Band counts that cannot work are refused; what differs but can be learnt is stated."""
    notes = []
    if params.task == "oilspill":
        if not 1 <= params.band <= info.count:
            raise RasterError(f"SAR band {params.band} does not exist: '{Path(params.image_path).name}' has "
                              f"{info.count} band(s).")
    if params.task == "change":
        info_b = raster_info(params.image_b_path)
        if info_b.count != info.count:
            raise RasterError(f"Layer '{Path(params.image_path).name}' has {info.count} band(s) but "
                              f"'{Path(params.image_b_path).name}' has {info_b.count}: both dates need the same bands.")
    resolution = info.ground_resolution_m
    if base is not None and base.ground_resolution and resolution:
        ratio = resolution / base.ground_resolution
        how = "about the same as" if 0.8 < ratio < 1.25 else ("coarser than" if ratio > 1 else "finer than")
        notes.append(f"Ground resolution: your image is {resolution:.3g} m, {how} the base model's "
                     f"{base.ground_resolution:g} m; trained at your image's resolution (not resampled), so the new "
                     "model fits images like yours.")
    return notes


def _fingerprint(params: FitParams, base_dir: str) -> dict:
    """What makes a run the same run: anything else (steps, time, device) may change between resumed calls."""
    same = {k: v for k, v in dataclasses.asdict(params).items()
            if k not in ("steps", "time_budget_minutes", "device", "on_step", "name")}
    files = [params.image_path, params.labels_path] + ([params.image_b_path] if params.image_b_path else [])
    return {**same, "base_dir": str(Path(base_dir).resolve()) if base_dir else "",
            "files": [[str(Path(f).resolve()), Path(f).stat().st_mtime_ns, Path(f).stat().st_size] for f in files]}


def _prepare_run(run: Path, params: FitParams, base_dir: str) -> bool:
    """True when the run folder holds a training state of the same run (go on from it); else a fresh run folder."""
    path = run / "fit.json"
    try:
        same = json.loads(path.read_text(encoding="utf-8"))["fingerprint"] == json.loads(
            json.dumps(_fingerprint(params, base_dir)))
    except (OSError, ValueError, KeyError):
        same = False
    if same and (run / STATE_NAME).is_file():
        return True
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    path.write_text(json.dumps({"fingerprint": _fingerprint(params, base_dir)}, indent=1), encoding="utf-8")
    return False


# --- training data ------------------------------------------------------------------------------------------

def _build_patches(params: FitParams, base: ModelCard | None, out: Path, progress: Progress) -> None:
    shutil.rmtree(out, ignore_errors=True)
    common = dict(output_dir=str(out), patch_size=params.patch_size, stride=params.patch_size,
                  max_nodata_fraction=1 - MIN_LABELLED_FRACTION)
    if params.task == "change":
        if Path(params.labels_path).suffix.lower() not in VECTOR_SUFFIXES:
            _check_single_band(params.labels_path)    # the class-raster reader checks its own
        build_change_training_set(ChangeTrainingSetParams(
            params.image_path, params.image_b_path, params.labels_path, changes_layer=params.labels_layer,
            **common), progress)
        return
    build_training_set(TrainingSetParams(
        params.image_path, params.labels_path, class_field=params.class_field, labels_layer=params.labels_layer,
        unlabelled_outside=True, class_values={c.name: c.value for c in base.classes} if base else None,
        bands=[params.band] if params.task == "oilspill" else None, **common), progress)
    if params.land_mask_path:
        _mask_land(params, out)


def _check_single_band(path: str) -> None:
    with open_raster(path) as src:
        if src.count != 1:
            raise RasterError(f"Change raster '{Path(path).name}' has {src.count} bands; expected one band "
                              "(0/1 or 0/255).")


def _mask_land(params: FitParams, out: Path) -> None:
    """Land pixels become unlabelled: the detector is applied with the same land mask, so it never learns land."""
    import rasterio.features

    from core.raster import write_geotiff
    from core.vector import read_polygons_in_crs
    info = raster_info(params.image_path)
    land = [g for g in read_polygons_in_crs(params.land_mask_path, info.crs_wkt, params.land_mask_layer or None,
                                            "Land mask") if not g.is_empty]
    if not land:
        return
    present = set()
    for mask_path in sorted((out / "masks").iterdir()):
        with open_raster(mask_path) as src:
            mask, transform, crs = src.read(1), src.transform, src.crs
        on_land = rasterio.features.geometry_mask(land, mask.shape, transform, invert=True)
        if on_land.any():
            mask[on_land] = LABEL_NODATA
            write_geotiff(mask_path, mask, crs_wkt=crs.to_wkt() if crs else None, transform=tuple(transform)[:6],
                          nodata=LABEL_NODATA)
        present.update(np.unique(mask).tolist())
    classes, bands = read_class_table(out)   # a class seen only on land is no class of the new model
    write_class_table(out, [dataclasses.asdict(c) for c in classes if c.value in present], bands or [])


def _patch_files(folder: Path, task: str) -> list[Path]:
    first = folder / DATA_FOLDERS[task][0]
    return sorted(p for p in first.iterdir() if PATCH_NAME.search(p.name)) if first.is_dir() else []


def _count(folder: Path, task: str) -> int:
    return len(_patch_files(folder, task))


def _hold_out(params: FitParams, data: Path, holdout: Path) -> list[str]:
    """Move a block of patch rows (or, with a single row, of columns) to `holdout`: whole blocks of the labelled
    area. Patches do not overlap (stride = patch size), so no held-out pixel is trained on."""
    shutil.rmtree(holdout, ignore_errors=True)
    files = _patch_files(data, params.task)
    if not files:
        raise TrainingError(f"No patch of {params.patch_size} x {params.patch_size} px has labelled pixels: "
                            "the labels cover too little of the image (or only nodata). Label a larger area or "
                            "lower the patch size.")
    position = {p.name: tuple(int(v) for v in PATCH_NAME.search(p.name).groups()) for p in files}
    rows = sorted({r for r, _ in position.values()})
    cols = sorted({c for _, c in position.values()})
    axis, values = (0, rows) if len(rows) > 1 else (1, cols)
    if len(values) < 2 or params.val_fraction == 0:
        return ["No held-out block (the labelled area is a single patch row and column, or the held-out share "
                "is 0): the model is not scored."]
    count = min(len(values) - 1, max(1, int(round(len(values) * params.val_fraction))))
    held = set(_held_block(data, params.task, position, axis, values, count))
    for folder in DATA_FOLDERS[params.task]:
        (holdout / folder).mkdir(parents=True, exist_ok=True)
        for path in sorted((data / folder).iterdir()):
            if path.name in position and position[path.name][axis] in held:
                shutil.move(str(path), holdout / folder / path.name)
    if (data / "classes.json").is_file():
        shutil.copy(data / "classes.json", holdout / "classes.json")
    where = "rows" if axis == 0 else "columns"
    return [f"Held out for scoring: {count} of {len(values)} patch {where}, a contiguous block "
            f"({_count(holdout, params.task)} patches), never trained on."]


def _held_block(data: Path, task: str, position: dict, axis: int, values: list[int], count: int) -> list[int]:
    """The `count` contiguous patch rows (or columns) to hold out: the last ones whose removal leaves an example
    of every labelled class for training, searched from the bottom (right) up; the last ones if there are none."""
    labels = data / DATA_FOLDERS[task][-1]
    classes_in = {v: set() for v in values}
    for path in labels.iterdir():
        if path.name in position:
            with open_raster(path) as src:
                classes_in[position[path.name][axis]] |= set(np.unique(src.read(1)).tolist()) - {LABEL_NODATA}
    everything = set().union(*classes_in.values())
    for start in range(len(values) - count, -1, -1):
        block = values[start:start + count]
        if set().union(*(classes_in[v] for v in values if v not in block)) == everything:
            return block
    return values[-count:]


def _class_table(params: FitParams, base: ModelCard | None, data: Path, holdout: Path) -> list[ClassInfo]:
    """The new model's classes: numeric labels take the base model's name and colour of the same value,
    class names the base's colour of the same name (their values were matched when the polygons were burnt)."""
    if params.task == "change":
        from core.data.change import CHANGE_CLASSES
        return [ClassInfo(**c) for c in CHANGE_CLASSES]
    classes, bands = read_class_table(data)
    by_value = {c.value: c for c in base.classes} if base else {}
    by_name = {c.name.strip().lower(): c for c in base.classes} if base else {}
    table = []
    for c in classes:
        known = by_name.get(c.name.strip().lower()) or (by_value.get(c.value) if c.name == f"class {c.value}" or
                                                        c.name == str(c.value) else None)
        table.append(ClassInfo(c.value, known.name, known.color) if known else
                     ClassInfo(c.value, c.name, c.color or PALETTE[c.value % len(PALETTE)]))
    for folder in (data, holdout):
        if (folder / "classes.json").is_file():
            write_class_table(folder, [dataclasses.asdict(c) for c in table], bands or [])
    return table


def _label_counts(folder: Path, params: FitParams, values: list[int]) -> np.ndarray:
    counts = np.zeros(len(values), np.int64)
    label_folder = folder / DATA_FOLDERS[params.task][-1]
    for path in sorted(label_folder.iterdir()) if label_folder.is_dir() else []:
        with open_raster(path) as src:
            mask = src.read(1)
        for i, v in enumerate(values):
            counts[i] += int(np.count_nonzero(mask == v))
    return counts


def _check_training_part(params: FitParams, data: Path, classes: list[ClassInfo]) -> list[float]:
    """Refuse too few labelled pixels or a class without examples in the training part; the class weights
    (inverse square root of each class's share, mean 1) that keep rare classes (oil, change) from vanishing."""
    counts = _label_counts(data, params, [c.value for c in classes])
    if counts.sum() < params.patch_size ** 2:
        raise TrainingError(f"Only {counts.sum()} labelled pixels in the training part, fewer than one patch "
                            f"({params.patch_size} x {params.patch_size} px): label a larger area.")
    missing = [c.name for c, n in zip(classes, counts) if n == 0]
    if missing:
        raise TrainingError(f"Class(es) {', '.join(repr(m) for m in missing)} have no labelled pixel in the "
                            "training part (only in the held-out block of patch rows): label "
                            "examples of them elsewhere too, or remove them from the labels.")
    share = counts / counts.sum()
    weights = 1 / np.sqrt(share)
    weights = np.clip(weights / weights.mean(), 0.1, 20.0)
    return [round(float(w), 4) for w in weights]


# --- training -------------------------------------------------------------------------------------------------

def _trainer(params: FitParams, base_dir: str, run: Path, data: Path, holdout: Path, weights: list[float],
             resume: bool):
    """(config, train function) of the task's trainer."""
    has_holdout = _count(holdout, params.task) > 0
    common = dict(data=str(data), output=str(run), name=params.name, batch_size=params.batch_size,
                  steps=params.steps, lr=params.lr, val_every=max(1, params.steps // 5),
                  checkpoint_every=max(1, min(25, params.steps)), seed=params.seed, device=params.device,
                  resume=resume, init_from=base_dir, patch_size=params.patch_size, samples_per_image=1,
                  val_fraction=0.0, **({"eval_data": str(holdout)} if has_holdout else {}))
    if params.task == "segmentation":
        from core.segmentation.model import STARTER_ARCHITECTURE
        from training.segment import SegmentTrainConfig, train_segmenter
        return SegmentTrainConfig(**common, encoder=params.encoder or STARTER_ARCHITECTURE["encoder"],
                                  class_weights=weights, tile_size=max(256, params.patch_size)), train_segmenter
    if params.task == "oilspill":
        from core.data.sar_scaling import SarScaling, fit_scene_scaler
        from training.sar import SarossTrainConfig, train_saross
        base = load_card(base_dir) if base_dir else None
        scaling = SarScaling.from_dict(base.extra.get("sar_scaling") if base else None)
        scaler = fit_scene_scaler(params.image_path, params.band, scaling)
        return SarossTrainConfig(**common, encoder=params.encoder, to_db=scaling.to_db,
                                 clip_percentiles=list(scaling.clip_percentiles),
                                 scene_stretch=[scaler.low, scaler.high],
                                 scene_kind=scaler.kind, synthetic=params.synthetic,
                                 synthetic_ratio=1.0 if params.synthetic else 0.0,
                                 tile_size=max(256, params.patch_size)), train_saross
    from core.data.images import unit_range
    from training.changedet import ChangeDetTrainConfig, train_changedet
    ranges = []
    for path in (params.image_path, params.image_b_path):
        with open_raster(path) as src:
            ranges.append(unit_range(src, list(range(1, src.count + 1))))
    return ChangeDetTrainConfig(**common, class_weights=weights, unit_range=[min(r[0] for r in ranges),
                                                                                max(r[1] for r in ranges)],
                                synthetic=params.synthetic, synthetic_ratio=2.0 if params.synthetic else 0.0
                                ), train_changedet


# --- scoring ---------------------------------------------------------------------------------------------------

def _score(params: FitParams, model_dir: str, card: ModelCard, holdout: Path, classes: list[ClassInfo]
           ) -> dict[str, float]:
    """Scores of a model on the held-out patches, its predictions matched to the new classes by name (a base
    class the labels do not have counts as a wrong answer)."""
    device = resolve_device(params.device)
    if params.task == "change":
        return _score_change(params, model_dir, card, holdout, device)
    from core.metrics.segmentation import scores
    names = [c.name for c in classes]
    to_new = {i: names.index(c.name) if c.name in names else len(names) for i, c in enumerate(card.classes)}
    lookup = torch.tensor([to_new[i] for i in range(len(card.classes))])
    model, loader = _segmentation_model_and_loader(params, model_dir, card, holdout)
    model = model.to(device).eval()
    n = len(names) + 1
    cm = torch.zeros(n, n, dtype=torch.long)
    with torch.inference_mode():
        for x, y, *_ in loader:
            pred = lookup[model(x.to(device)).argmax(1).cpu()]
            keep = y != IGNORE_INDEX
            cm += torch.bincount(y[keep] * n + pred[keep], minlength=n * n).reshape(n, n)
    result = scores(cm, names + ["(a class the labels do not have)"])
    per_class = [result[f"IoU/{name}"] for name in names]
    result = {k: v for k, v in result.items() if "(a class" not in k}
    result["mIoU"] = float(np.nanmean(per_class))
    result["mF1"] = float(np.nanmean([result[f"F1/{name}"] for name in names]))
    return {k: round(float(v), 4) for k, v in result.items() if np.isfinite(v)}


def _segmentation_model_and_loader(params: FitParams, model_dir: str, card: ModelCard, holdout: Path):
    from core.data.folder import FolderDataset, PatchDataset
    pairs = FolderDataset.open(holdout).pairs
    classes, _ = read_class_table(holdout)
    if params.task == "segmentation":
        from core.segmentation.model import build_segmenter
        model = load_into(build_segmenter(card.architecture), model_dir)
        data = PatchDataset(pairs, classes, card.normalization.offset, card.normalization.scale,
                            params.patch_size, train=False)
        if len(card.bands) != raster_info(pairs[0][0]).count:
            raise _NotComparable(card)
    else:
        from core.data.sar import open_sar_dataset
        from core.data.sar_scaling import SarScaling, fit_scene_scaler
        from core.oilspill.saross import build_saross
        from training.sar import SceneStretchCrops
        model = load_into(build_saross(card.architecture), model_dir)
        scaler = fit_scene_scaler(params.image_path, params.band,
                                  SarScaling.from_dict(card.extra.get("sar_scaling")))
        data = SceneStretchCrops(open_sar_dataset(holdout), scaler, params.patch_size, train=False)
    return model, torch.utils.data.DataLoader(data, batch_size=params.batch_size)


def _score_change(params: FitParams, model_dir: str, card: ModelCard, holdout: Path, device) -> dict[str, float]:
    from core.change.fcsiam import build_changedet
    from core.data.change import ChangePatchDataset, list_change_triplets
    from training.changedet import evaluate_patches
    data = ChangePatchDataset(list_change_triplets(holdout), params.patch_size, train=False)
    if len(card.bands) != data.bands:
        raise _NotComparable(card)
    low, scale = card.normalization.offset[0], card.normalization.scale[0]
    data.ranges = [((low, low + scale), (low, low + scale))] * len(data.triplets)
    model = load_into(build_changedet(card.architecture), model_dir).to(device)
    result = evaluate_patches(model, torch.utils.data.DataLoader(data, batch_size=params.batch_size), device)
    return {k: round(float(v), 4) for k, v in result.items() if np.isfinite(v)}


class _NotComparable(TrainingError):
    def __init__(self, card: ModelCard):
        super().__init__(f"'{card.name}' takes {len(card.bands)} band(s): it cannot be scored on these layers.")


def _compare(scores: dict, base_scores: dict, task: str) -> str:
    key = "IoU" if task == "change" else "mIoU"
    if key not in scores:
        return "no held-out score."
    text = f"held-out {key} {scores[key]:.3f}"
    return text + (f" (base model: {base_scores[key]:.3f})." if key in base_scores else ".")


def _final_card(params: FitParams, card: ModelCard, base: ModelCard | None, info, scores: dict, base_scores: dict,
                notes: list[str], cfg) -> ModelCard:
    """The trainer's card plus what a user needs to trust and reuse the model: layers, base, both scores."""
    layers = [params.image_path] + ([params.image_b_path] if params.task == "change" else [])
    described = []
    for path in layers + [params.labels_path]:
        described.append(_describe_layer(path, params))
    extra = dict(card.extra)
    extra.pop("init_notes", None)
    extra["fine_tuning"] = {
        "base_model": base.name if base else SCRATCH, "base_scores": base_scores, "layers": described,
        "class_weights": getattr(cfg, "class_weights", []), "patch_size": params.patch_size,
        "batch_size": params.batch_size, "lr": params.lr, "notes": notes}
    resolution = info.ground_resolution_m
    return dataclasses.replace(
        card, name=params.name, ground_resolution=round(resolution, 4) if resolution else None,
        training_data=f"fitted to {', '.join(Path(p).name for p in layers)} with labels "
                      f"{Path(params.labels_path).name}" + (f" (field {params.class_field})" if params.class_field
                                                            else "") + f", from {base.name if base else 'scratch'}",
        metrics=scores, extra=extra)


def _describe_layer(path: str, params: FitParams) -> dict:
    if Path(path).suffix.lower() in VECTOR_SUFFIXES:
        import fiona
        with fiona.open(path, layer=params.labels_layer or None) as src:
            return {"name": Path(path).name, "kind": "polygons", "crs": src.crs_wkt or None,
                    "class_field": params.class_field, "features": len(src)}
    info = raster_info(path)
    return {"name": Path(path).name, "kind": "raster", "crs": info.crs_wkt, "resolution": list(info.resolution),
            "data_type": info.dtype, "bands": list(info.band_names), "size": [info.width, info.height]}


# --- command line ------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--task", required=True, choices=tuple(TASKS))
    parser.add_argument("--image", required=True, help="the image (change detection: date A)")
    parser.add_argument("--image-b", dest="image_b", default="", help="change detection: date B")
    parser.add_argument("--labels", required=True, help="class raster or polygons (change: change raster or polygons)")
    parser.add_argument("--class-field", dest="class_field", default="", help="polygons: the class attribute")
    parser.add_argument("--labels-layer", dest="labels_layer", default="", help="layer inside a multi-layer file")
    parser.add_argument("--output", required=True, help="the new model folder")
    parser.add_argument("--init-from", dest="init_from", default="", metavar="MODEL",
                        help=f"base model folder or name (default: the task's starter; '{SCRATCH}': random weights)")
    parser.add_argument("--encoder", default="", help="from scratch: an smp or tu-<timm> encoder")
    parser.add_argument("--steps", type=int, default=0, help="optimiser steps (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items()) + ")")
    parser.add_argument("--minutes", type=float, default=0.0, help="time budget; 0: none")
    parser.add_argument("--patch-size", dest="patch_size", type=int, default=128)
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=0)
    parser.add_argument("--lr", type=float, default=0.0)
    parser.add_argument("--holdout", type=float, default=0.2, help="share of patch rows held out for scoring")
    parser.add_argument("--band", type=int, default=1, help="oil spills: the SAR band")
    parser.add_argument("--land-mask", dest="land_mask", default="", help="oil spills: land polygons")
    parser.add_argument("--synthetic", default="",
                        help="generated pairs (oil: with soft labels, DAKD; change: A/B/label)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0)


def main(args) -> None:
    from core.progress import TqdmProgress
    progress = TqdmProgress(f"finetune {args.task}")
    result = fit_to_layers(FitParams(
        task=args.task, image_path=args.image, image_b_path=args.image_b, labels_path=args.labels,
        class_field=args.class_field, labels_layer=args.labels_layer, output_model=args.output,
        base_model=args.init_from, encoder=args.encoder, steps=args.steps, time_budget_minutes=args.minutes,
        patch_size=args.patch_size, batch_size=args.batch_size, lr=args.lr, val_fraction=args.holdout,
        band=args.band, land_mask_path=args.land_mask, synthetic=args.synthetic, device=args.device,
        seed=args.seed), progress)
    progress.close()
    print(json.dumps({"model": result.model_dir, "base_model": result.base_model, "scores": result.scores,
                      "base_scores": result.base_scores, "steps": result.steps,
                      "seconds": round(result.seconds, 1)}, indent=2))
