"""Refinement datasets: coarse maps beside the masks, aligned triplet patches, and the before/after evaluation.

A refinement dataset is the folder format (images/, masks/, classes.json) plus

    dataset/coarse/<mask stem>.tif    coarse class map, same grid and class values as the mask
    dataset/coarse/source.txt         how the coarse maps were made
    dataset/coarse/report.md          their scores against the masks (how much a refiner has to fix)
    dataset/coarse/folds.json         out-of-fold maps only: which scenes each fold's segmenter trained on

`python -m training coarse-labels` makes them: a segmenter's predictions, as the paper does, out-of-fold
predictions (`--folds K`: a refiner must learn from maps with the errors it will meet, and a segmenter's maps of
its own training scenes are nearly perfect, so a refiner trained on them learns to copy), and/or the true masks
or the predictions with degraded boundaries. `python -m training evaluate-refinement` refines every coarse map
with refine_raster and scores coarse and refined maps against the masks with the boundary-aware metrics.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from core.catalog import starter_model_dir
from core.checkpoint import ClassInfo, load_card
from core.data.folder import IMAGE_SUFFIXES, FolderDataset, PatchDataset, list_pairs, read_class_indices
from core.metrics.boundary import BoundaryMetrics
from core.progress import Progress, SubProgress, TqdmProgress
from core.raster import (RasterError, hex_to_rgba, open_raster, raster_info, read_window, staged_dir,
                         write_geotiff)

COARSE_DIR = "coarse"
SOURCE_NAME = "source.txt"
REPORT_NAME = "report.md"       # the coarse maps' scores against the masks
FOLDS_NAME = "folds.json"       # out-of-fold maps: which scenes each fold's segmenter trained on
DEFAULT_FOLD_CONFIG = Path(__file__).parent / "configs" / "segmentation_starter.toml"
FOLD_STEPS = (300,)
REPORT_METRICS = ("accuracy", "mIoU", "bIoU@3", "WFm@1", "WFm@3", "WFm@5")
REPORTED_METRICS = ("mIoU", "mF1", "bIoU@1", "bIoU@3", "bIoU@5", "WFm@1", "WFm@3", "WFm@5")


# --- reading a refinement dataset ----------------------------------------------------------------------
def list_triplets(root: str | Path, coarse: str | Path = "") -> list[tuple[Path, Path, Path]]:
    """(image, mask, coarse map) per image; every mask needs its coarse map in `coarse` (default: root/coarse/)."""
    coarse_dir = Path(coarse) if coarse else Path(root) / COARSE_DIR
    if not coarse_dir.is_dir():
        raise RasterError(f"Dataset '{root}' has no folder of coarse class maps {coarse_dir}; make them with "
                          "`python -m training coarse-labels`.")
    by_stem = {p.stem: p for p in coarse_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = list_pairs(root)
    missing = [mask.name for _, mask in pairs if mask.stem not in by_stem]
    if missing:
        raise RasterError(f"Dataset '{root}': no coarse map in {coarse_dir} for the mask(s) {', '.join(missing[:5])}.")
    return [(image, mask, by_stem[mask.stem]) for image, mask in pairs]


def coarse_source(root: str | Path, coarse: str | Path = "") -> str:
    """What source.txt of the coarse maps (default: root/coarse/) says about how they were made ("" when unknown)."""
    path = (Path(coarse) if coarse else Path(root) / COARSE_DIR) / SOURCE_NAME
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


class TripletPatchDataset(PatchDataset):
    """(image in [-1, 1], labels, coarse labels) cut with the same window and the same rotation/flip.

    `low`/`span` are the per-band range (band_ranges). Pixels whose value is not in the class table (or
    nodata) become class 0 in both maps: the diffusion model generates a class for every pixel.
    """

    def __init__(self, triplets, classes: list[ClassInfo], low, span, patch: int, samples_per_image: int = 1,
                 train: bool = True):
        super().__init__([(image, mask) for image, mask, _ in triplets], classes, low, span, patch,
                         samples_per_image, train)
        self.coarse = [coarse for _, _, coarse in triplets]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (image_path, mask_path), coarse_path = self.pairs[index % len(self.pairs)], self.coarse[index % len(self.pairs)]
        with open_raster(image_path) as src, open_raster(mask_path) as msk, open_raster(coarse_path) as crs:
            sizes = [(r.width, r.height) for r in (src, msk, crs)]
            if len(set(sizes)) > 1:
                raise RasterError(f"Image {image_path.name}, its mask and its coarse map must have the same size; "
                                  f"they are {', '.join(f'{w}x{h}' for w, h in sizes)}.")
            window = self._window(src.width, src.height)
            data, valid = read_window(src, window, range(1, src.count + 1))
            labels, coarse = msk.read(1, window=window), crs.read(1, window=window)
        image = np.where(valid, np.clip((data - self.mean) / self.std * 2 - 1, -1, 1), -1.0).astype(np.float32)
        labels, coarse = (np.maximum(self.lookup[m.astype(np.int64)], 0) for m in (labels, coarse))
        pad = ((0, self.patch - labels.shape[0]), (0, self.patch - labels.shape[1]))
        image = np.pad(image, ((0, 0), *pad), constant_values=-1)
        labels, coarse = np.pad(labels, pad), np.pad(coarse, pad)
        if self.train:
            turns, flip = int(torch.randint(4, ())), bool(torch.randint(2, ()))
            image, labels, coarse = (np.rot90(a, turns, (-2, -1)) for a in (image, labels, coarse))
            if flip:
                image, labels, coarse = image[..., ::-1], labels[..., ::-1], coarse[..., ::-1]
        return tuple(torch.from_numpy(a.copy()) for a in (image, labels, coarse))


# --- coarse-labels -------------------------------------------------------------------------------------
def degrade_boundaries(labels: np.ndarray, max_shift: int, rng: np.random.Generator,
                       valid: np.ndarray | None = None) -> np.ndarray:
    """Move boundaries: each class region (classes in random order) grows or shrinks by a random 0..max_shift px.

    Shrunk pixels take the class of the nearest pixel of another class, so the result holds only the input's
    values; invalid pixels keep their value and are never grown into. The image border is not a boundary.
    """
    out = labels.copy()
    valid = np.ones(labels.shape, bool) if valid is None else valid
    for value in rng.permutation(np.unique(labels[valid])):
        shift = int(rng.integers(-max_shift, max_shift + 1))
        region = (out == value) & valid
        if shift > 0:
            out[ndimage.binary_dilation(region, _disk(shift)) & valid] = value
        elif shift < 0:
            removed = region & ~ndimage.binary_erosion(region, _disk(-shift), border_value=1)
            others = valid & ~region
            if removed.any() and others.any():
                _, (rows, cols) = ndimage.distance_transform_edt(~others, return_indices=True)
                out[removed] = out[rows[removed], cols[removed]]
    return out


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return np.hypot(yy, xx) <= radius


def write_coarse_labels(data: str, output: str = "", model_dir: str = "", degrade: int = 0, seed: int = 0,
                        device: str = "auto", batch_size: int = 4, progress: Progress | None = None,
                        folds: int = 0, fold_steps: tuple[int, ...] = FOLD_STEPS, fold_config: str = "") -> Path:
    """One coarse map per mask into `output` (default <data>/coarse), plus source.txt and report.md (the coarse
    maps' scores against the masks: how much there is to fix); refuses a non-empty folder.

    With a segmentation model (`model_dir`; the starter segmenter when neither it, `folds` nor `degrade` is
    given) the maps are its predictions. With `folds` K >= 2 they are out-of-fold predictions: the scenes are
    split into K folds and each fold's maps come from a segmenter trained (`fold_config`, `fold_steps`) on the
    other folds only, so every map has the errors of a model that never saw its scene (folds.json records
    who trained on what). `degrade` N > 0 moves boundaries by up to N px: of the predictions when there are
    any, else of the true masks.
    """
    from core.segmentation.pipeline import TASK as SEGMENTATION_TASK
    if degrade < 0:
        raise ValueError(f"--degrade is a number of pixels >= 0, not {degrade}.")
    progress = progress or Progress()
    dataset = FolderDataset.open(data)
    if folds and model_dir:
        raise ValueError("Give either --model (one segmenter's predictions) or --folds (out-of-fold predictions of "
                         "segmenters trained here), not both.")
    use_model = not folds and (bool(model_dir) or degrade == 0)
    model_dir = model_dir or str(starter_model_dir(SEGMENTATION_TASK))
    if folds:
        source = _fold_source(folds, fold_steps, fold_config)
    elif use_model:
        card = load_card(model_dir, task=SEGMENTATION_TASK)
        _check_model_classes(card, dataset)
        source = f"predictions of the segmentation model '{card.name}' ({Path(model_dir).resolve().name})"
    else:
        source = "true masks with degraded boundaries"
    if degrade:
        source += (":" if source.startswith("true") else ", then") + (
            f" each class region grown or shrunk by a random 0..{degrade} px per image (seed {seed})")
    colormap = {c.value: hex_to_rgba(c.color) for c in dataset.classes}
    dest = Path(output) if output else Path(data) / COARSE_DIR
    n = len(dataset.pairs)
    with staged_dir(dest) as tmp:
        if folds:
            groups = _write_out_of_fold(dataset, tmp, folds, fold_steps, fold_config, seed, device, batch_size,
                                        SubProgress(progress, 0.0, 0.9))
        else:
            groups = {}
            for index, (image, mask) in enumerate(dataset.pairs):
                if use_model:
                    _predict(image, tmp / f"{mask.stem}.tif", model_dir, device, batch_size,
                             SubProgress(progress, 0.9 * index / n, 0.9 * (index + 0.9) / n))
                progress.step(index + 1, n)
        if degrade:
            for index, (_, mask) in enumerate(dataset.pairs):
                target = tmp / f"{mask.stem}.tif"
                _write_degraded(target if (use_model or folds) else mask, target, degrade,
                                np.random.default_rng([seed, index]), colormap)
        (tmp / SOURCE_NAME).write_text(source + "\n", encoding="utf-8")
        report = coarse_report(dataset, tmp, source, groups)
        (tmp / REPORT_NAME).write_text(report, encoding="utf-8")
    progress.info(f"{n} coarse maps written to {dest} ({source}).")
    progress.info(report)
    return dest


def _check_model_classes(card, dataset: FolderDataset) -> None:
    unknown = sorted({c.value for c in card.classes} - {c.value for c in dataset.classes})
    if unknown:
        raise ValueError(f"Segmentation model '{card.name}' predicts class values {unknown} that the dataset's "
                         f"classes.json does not have: its coarse maps would not match the masks.")


def _predict(image: Path, target: Path, model_dir: str, device: str, batch_size: int, progress: Progress) -> None:
    from core.segmentation.pipeline import SegmentParams, segment_raster
    segment_raster(SegmentParams(input_path=str(image), output_path=str(target), model_dir=model_dir,
                                 device=device, batch_size=batch_size, layer_name=image.name), progress)


def fold_assignment(stems: list[str], folds: int, seed: int) -> dict[str, int]:
    """Scene stem -> fold index: a seeded shuffle dealt round-robin, so folds differ in size by at most one."""
    if not 2 <= folds <= len(stems):
        raise ValueError(f"--folds must be between 2 and the number of images ({len(stems)}), not {folds}.")
    order = np.random.default_rng(seed).permutation(len(stems))
    return {stems[i]: position % folds for position, i in enumerate(order)}


def _fold_source(folds: int, fold_steps: tuple[int, ...], fold_config: str) -> str:
    if not fold_steps or min(fold_steps) < 1:
        raise ValueError(f"--fold-steps needs one or more step counts >= 1, not {list(fold_steps)}.")
    config = Path(fold_config or DEFAULT_FOLD_CONFIG)
    steps = ", ".join(str(s) for s in fold_steps)
    return (f"out-of-fold predictions: {folds} folds, each fold's maps from a segmenter ({config.name}) trained "
            f"{steps} steps (fold by fold, in turn) on the other folds only; fold membership in {FOLDS_NAME}")


def _write_out_of_fold(dataset: FolderDataset, tmp: Path, folds: int, fold_steps: tuple[int, ...],
                       fold_config: str, seed: int, device: str, batch_size: int,
                       progress: Progress) -> dict[str, list[str]]:
    """Train one segmenter per fold on the other folds (in tmp/_folds, removed afterwards) and predict the fold's
    scenes with it; writes folds.json and returns {fold name: its scene stems}."""
    from training.config import load_config
    from training.segment import SegmentTrainConfig, train_segmenter
    stems = [mask.stem for _, mask in dataset.pairs]
    fold_of = fold_assignment(stems, folds, seed)
    work = tmp / "_folds"
    record, groups = [], {}
    for k in range(folds):
        held_out = [pair for pair, stem in zip(dataset.pairs, stems) if fold_of[stem] == k]
        training = [pair for pair, stem in zip(dataset.pairs, stems) if fold_of[stem] != k]
        fold_data = _fold_dataset(Path(dataset.pairs[0][0]).parent.parent, training, work / f"fold_{k + 1}" / "data")
        steps = fold_steps[k % len(fold_steps)]
        cfg = replace(load_config(SegmentTrainConfig, fold_config or str(DEFAULT_FOLD_CONFIG)),
                      data=str(fold_data), output=str(work / f"fold_{k + 1}" / "run"), steps=steps,
                      val_fraction=0.0, val_every=0, checkpoint_every=steps, seed=seed + k, device=device,
                      resume=False, name=f"coarse-labels fold {k + 1}/{folds} segmenter ({steps} steps)")
        progress.info(f"Fold {k + 1}/{folds}: training a segmenter for {steps} steps on {len(training)} scenes, "
                      f"then predicting its {len(held_out)} held-out scenes.")
        model_dir = str(train_segmenter(cfg))
        _check_model_classes(load_card(model_dir), dataset)
        for index, (image, mask) in enumerate(held_out):
            _predict(image, tmp / f"{mask.stem}.tif", model_dir, device, batch_size, Progress())
            progress.check()
        progress.step(k + 1, folds)
        name = f"fold {k + 1}"
        groups[name] = [mask.stem for _, mask in held_out]
        record.append({"fold": k + 1, "segmenter": cfg.name, "steps": steps, "arch": cfg.arch,
                       "encoder": cfg.encoder, "trained_on": [mask.stem for _, mask in training],
                       "coarse_maps": groups[name]})
    shutil.rmtree(work)
    (tmp / FOLDS_NAME).write_text(json.dumps({"folds": folds, "seed": seed, "fold_config": Path(
        fold_config or DEFAULT_FOLD_CONFIG).name, "runs": record}, indent=2), encoding="utf-8")
    return groups


def _fold_dataset(root: Path, pairs: list[tuple[Path, Path]], dest: Path) -> Path:
    """A dataset folder of the given pairs (links where the system allows, else copies) and the class table."""
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True)
    for image, mask in pairs:
        for path, sub in ((image, "images"), (mask, "masks")):
            try:
                os.symlink(path.resolve(), dest / sub / path.name)
            except OSError:
                shutil.copy2(path, dest / sub / path.name)
    shutil.copy2(root / "classes.json", dest / "classes.json")
    return dest


def coarse_report(dataset: FolderDataset, coarse_dir: Path, source: str, groups: dict[str, list[str]]) -> str:
    """Markdown: the coarse maps' scores against the masks, over all images and per group (e.g. per fold)."""
    names = [c.name for c in dataset.classes]
    overall, per_group = BoundaryMetrics(names, ignore=-1), {g: BoundaryMetrics(names, ignore=-1) for g in groups}
    group_of = {stem: g for g, stems in groups.items() for stem in stems}
    for _, mask in dataset.pairs:
        truth = read_class_indices(mask, dataset.classes)
        coarse = read_class_indices(coarse_dir / f"{mask.stem}.tif", dataset.classes)
        counted = (truth >= 0) & (coarse >= 0)
        pair = (np.where(counted, coarse, 0), np.where(counted, truth, -1))
        overall.add(*pair)
        if mask.stem in group_of:
            per_group[group_of[mask.stem]].add(*pair)
    rows = {"all": overall.result(), **{g: m.result() for g, m in per_group.items()}}
    lines = [f"Coarse maps of {Path(dataset.pairs[0][1]).parent.parent.resolve().name} against the masks "
             f"({len(dataset.pairs)} images): {source}.", "",
             "| images | " + " | ".join(REPORT_METRICS) + " |", "|---|" + "---:|" * len(REPORT_METRICS)]
    lines += [f"| {g} | " + " | ".join(f"{r[m]:.4f}" for m in REPORT_METRICS) + " |" for g, r in rows.items()]
    return "\n".join(lines) + "\n"


def _write_degraded(source: Path, target: Path, max_shift: int, rng: np.random.Generator, colormap: dict) -> None:
    info = raster_info(source)
    with open_raster(source) as src:
        labels = src.read(1)
    valid = np.ones(labels.shape, bool) if info.nodata is None else labels != info.nodata
    write_geotiff(target, degrade_boundaries(labels, max_shift, rng, valid), crs_wkt=info.crs_wkt,
                  transform=info.transform, nodata=info.nodata, band_names=["class"],
                  colormap=colormap if info.dtype in ("uint8", "uint16") else None)


# --- evaluate-refinement ---------------------------------------------------------------------------------
def evaluate_refinement(data: str, output: str, model_dir: str = "", samples: int = 1, steps: int = 0,
                        limit: int = 0, seed: int = 0, device: str = "auto",
                        progress: Progress | None = None, tile_size: int = 0, guidance_scale: float = 0.0,
                        strength: float = 0.0, max_entropy: float = 0.0) -> str:
    """Refine every coarse map into <output>/refined/, score coarse and refined maps against the masks.

    Writes metrics.csv (one row per source, every metric incl. per class) and metrics.md (which model, data
    and settings; coarse vs refined vs gain); returns the markdown. Both rows count the same pixels: those
    valid in mask, coarse and refined map.
    """
    from core.refinement.model import TASK as REFINEMENT_TASK
    from core.refinement.pipeline import RefineParams, change_gate, refine_raster, sampling_settings
    progress = progress or Progress()
    model_dir = model_dir or str(starter_model_dir(REFINEMENT_TASK))
    card = load_card(model_dir, task=REFINEMENT_TASK)
    classes = FolderDataset.open(data).classes
    triplets = list_triplets(data)[:limit or None]
    names = [c.name for c in classes]
    metrics = {"coarse": BoundaryMetrics(names, ignore=-1), "refined": BoundaryMetrics(names, ignore=-1)}
    changed = []
    n = len(triplets)
    with staged_dir(output) as tmp:
        (tmp / "refined").mkdir()
        for index, (image, mask, coarse) in enumerate(triplets):
            refined = tmp / "refined" / f"{mask.stem}.tif"
            params = RefineParams(
                image_path=str(image), classification_path=str(coarse), output_path=str(refined),
                model_dir=model_dir, samples=samples, steps=steps, guidance_scale=guidance_scale, strength=strength,
                max_entropy=max_entropy, seed=seed, device=device, tile_size=tile_size, image_layer_name=image.name,
                classification_layer_name=f"{COARSE_DIR}/{coarse.name}")
            result = refine_raster(params, SubProgress(progress, index / n, (index + 1) / n))
            changed.append(result.changed_fraction)
            truth, coarse_ids, refined_ids = (read_class_indices(p, classes) for p in (mask, coarse, refined))
            counted = (truth >= 0) & (coarse_ids >= 0) & (refined_ids >= 0)
            truth = np.where(counted, truth, -1)
            metrics["coarse"].add(np.where(counted, coarse_ids, 0), truth)
            metrics["refined"].add(np.where(counted, refined_ids, 0), truth)
        results = {source: m.result() for source, m in metrics.items()}
        _write_csv(tmp / "metrics.csv", results)
        run = RefineParams("", "", "", steps=steps, guidance_scale=guidance_scale, strength=strength,
                           max_entropy=max_entropy)
        sampling, gate = sampling_settings(run, card), change_gate(run, card)
        settings = {"model": f"'{card.name}' ({Path(model_dir).resolve()})",
                    "data": f"{Path(data).resolve()}: {n} images, coarse maps: {coarse_source(data) or _NO_SOURCE}",
                    "sampling": f"{samples} sample(s) per tile, {sampling['steps']} DDIM steps, guidance "
                                f"{sampling['guidance_scale']:g}, strength {sampling['strength']:g}, changes kept "
                                f"where the entropy is <= {gate:g}, tiles of {tile_size or card.tile_size} px, seed {seed}"}
        table = _markdown(results, settings, float(np.mean(changed)))
        (tmp / "metrics.md").write_text(table, encoding="utf-8")
    return table


def _write_csv(path: Path, results: dict[str, dict[str, float]]) -> None:
    columns = list(next(iter(results.values())))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", *columns])
        for source, row in results.items():
            writer.writerow([source, *(f"{row[c]:.6g}" for c in columns)])


def _markdown(results: dict[str, dict[str, float]], settings: dict[str, str], changed: float) -> str:
    coarse, refined = results["coarse"], results["refined"]
    lines = ["Refinement evaluation", "", *(f"- {key}: {value}" for key, value in settings.items()),
             f"- changed: {changed:.2%} of the valid pixels changed class (mean over images)", "",
             "| metric | coarse | refined | gain |", "|---|---:|---:|---:|"]
    lines += [f"| {m} | {coarse[m]:.4f} | {refined[m]:.4f} | {refined[m] - coarse[m]:+.4f} |" for m in REPORTED_METRICS]
    return "\n".join(lines) + "\n"


_NO_SOURCE = "origin not recorded (no coarse/source.txt)"


# --- command line ----------------------------------------------------------------------------------------
def add_coarse_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (images/, masks/, classes.json)")
    parser.add_argument("--output", default="", help="new or empty folder for the coarse maps (default DATA/coarse)")
    parser.add_argument("--model", default="", help="segmentation model directory whose predictions become the "
                        "coarse maps (default: the starter segmenter, unless --degrade is given alone)")
    parser.add_argument("--degrade", type=int, default=0, metavar="N",
                        help="move boundaries by up to N px: of the true masks, or of the predictions with --model")
    parser.add_argument("--folds", type=int, default=0, metavar="K",
                        help="out-of-fold predictions: K >= 2 folds, each predicted by a segmenter trained here on "
                             "the other folds only (fold membership in coarse/folds.json)")
    parser.add_argument("--fold-steps", default=",".join(map(str, FOLD_STEPS)), metavar="N[,N...]",
                        help="training steps of the fold segmenters; several values are used fold by fold in "
                             "turn, mixing weaker and stronger models")
    parser.add_argument("--fold-config", default="", metavar="FILE",
                        help="segment training config (TOML/JSON) of the fold segmenters; data, output, steps and "
                             "validation are set here (default: training/configs/segmentation_starter.toml)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and of the boundary degradation")
    parser.add_argument("--batch-size", type=int, default=4, help="segmentation tiles per batch")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_coarse(args) -> None:
    try:
        fold_steps = tuple(int(v) for v in args.fold_steps.split(","))
    except ValueError:
        raise ValueError(f"--fold-steps takes step counts separated by commas, e.g. 150,600; got "
                         f"'{args.fold_steps}'.") from None
    progress = TqdmProgress("coarse-labels")
    dest = write_coarse_labels(args.data, args.output, args.model, args.degrade, args.seed, args.device,
                               args.batch_size, progress, args.folds, fold_steps, args.fold_config)
    progress.close()
    print((dest / REPORT_NAME).read_text(encoding="utf-8"))
    print(f"coarse maps written to {dest}")


def add_evaluate_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder with images/, masks/, coarse/, classes.json")
    parser.add_argument("--output", required=True, help="new or empty folder: refined/, metrics.csv, metrics.md")
    parser.add_argument("--model", default="", help="IDGBR model directory (default: the starter refiner)")
    parser.add_argument("--samples", type=int, default=1, help="sampler runs per tile, probabilities averaged")
    parser.add_argument("--steps", type=int, default=0, help="DDIM steps (0: the model card's, 25)")
    parser.add_argument("--guidance", type=float, default=0.0, help="CFG weight (0: the model card's)")
    parser.add_argument("--strength", type=float, default=0.0,
                        help="share of the DDIM chain run from the noised coarse map, in (0, 1]; 1 = from pure noise "
                             "as in the paper (0: the model card's)")
    parser.add_argument("--max-entropy", type=float, default=0.0,
                        help="keep the coarse class where the refined probabilities' normalised entropy exceeds this, "
                             "in (0, 1]; 1 = every change kept as in the paper (0: the model card's)")
    parser.add_argument("--tile-size", type=int, default=0, help="tile size in px (0: the model card's)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_evaluate(args) -> None:
    progress = TqdmProgress("evaluate-refinement")
    table = evaluate_refinement(args.data, args.output, args.model, args.samples, args.steps, args.limit,
                                args.seed, args.device, progress, args.tile_size, args.guidance, args.strength,
                                args.max_entropy)
    progress.close()
    print(table)
