"""Refinement datasets: coarse maps beside the masks, aligned triplet patches, and the before/after evaluation.

A refinement dataset is the folder format (images/, masks/, classes.json) plus

    dataset/coarse/<mask stem>.tif    coarse class map, same grid and class values as the mask
    dataset/coarse/source.txt         how the coarse maps were made

`python -m training coarse-labels` makes them (a segmenter's predictions, as the paper does, and/or the true
masks with degraded boundaries); `python -m training evaluate-refinement` refines every coarse map with
refine_raster and scores coarse and refined maps against the masks with the boundary-aware metrics.
"""
from __future__ import annotations

import csv
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
REPORTED_METRICS = ("mIoU", "mF1", "bIoU@1", "bIoU@3", "bIoU@5", "WFm@1", "WFm@3", "WFm@5")


# --- reading a refinement dataset ----------------------------------------------------------------------
def list_triplets(root: str | Path) -> list[tuple[Path, Path, Path]]:
    """(image, mask, coarse map) per image; every mask needs its coarse map in coarse/."""
    coarse_dir = Path(root) / COARSE_DIR
    if not coarse_dir.is_dir():
        raise RasterError(f"Dataset '{root}' has no {COARSE_DIR}/ folder of coarse class maps; make them with "
                          "`python -m training coarse-labels`.")
    by_stem = {p.stem: p for p in coarse_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = list_pairs(root)
    missing = [mask.name for _, mask in pairs if mask.stem not in by_stem]
    if missing:
        raise RasterError(f"Dataset '{root}': no coarse map in {COARSE_DIR}/ for the mask(s) {', '.join(missing[:5])}.")
    return [(image, mask, by_stem[mask.stem]) for image, mask in pairs]


def coarse_source(root: str | Path) -> str:
    """What coarse/source.txt says about how the coarse maps were made ("" when unknown)."""
    path = Path(root) / COARSE_DIR / SOURCE_NAME
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
                        device: str = "auto", batch_size: int = 4, progress: Progress | None = None) -> Path:
    """One coarse map per mask into `output` (default <data>/coarse), plus source.txt; refuses a non-empty folder.

    With a segmentation model (`model_dir`; the starter segmenter when neither it nor `degrade` is given) the
    maps are its predictions; `degrade` N > 0 moves boundaries by up to N px, of the predictions when a model is
    given, else of the true masks.
    """
    from core.segmentation.pipeline import TASK as SEGMENTATION_TASK
    from core.segmentation.pipeline import SegmentParams, segment_raster
    if degrade < 0:
        raise ValueError(f"--degrade is a number of pixels >= 0, not {degrade}.")
    progress = progress or Progress()
    dataset = FolderDataset.open(data)
    use_model = bool(model_dir) or degrade == 0
    model_dir = model_dir or str(starter_model_dir(SEGMENTATION_TASK))
    if use_model:
        card = load_card(model_dir, task=SEGMENTATION_TASK)
        unknown = sorted({c.value for c in card.classes} - {c.value for c in dataset.classes})
        if unknown:
            raise ValueError(f"Segmentation model '{card.name}' predicts class values {unknown} that the dataset's "
                             f"classes.json does not have: its coarse maps would not match the masks.")
        source = f"predictions of the segmentation model '{card.name}' ({Path(model_dir).resolve().name})"
        if degrade:
            source += f", then each class region grown or shrunk by a random 0..{degrade} px (seed {seed})"
    else:
        source = (f"true masks with degraded boundaries: each class region grown or shrunk by a random "
                  f"0..{degrade} px per image (seed {seed})")
    colormap = {c.value: hex_to_rgba(c.color) for c in dataset.classes}
    dest = Path(output) if output else Path(data) / COARSE_DIR
    n = len(dataset.pairs)
    with staged_dir(dest) as tmp:
        for index, (image, mask) in enumerate(dataset.pairs):
            target = tmp / f"{mask.stem}.tif"
            if use_model:
                segment_raster(SegmentParams(input_path=str(image), output_path=str(target), model_dir=model_dir,
                                             device=device, batch_size=batch_size, layer_name=image.name),
                               SubProgress(progress, index / n, (index + 0.9) / n))
            if degrade:
                _write_degraded(target if use_model else mask, target, degrade,
                                np.random.default_rng([seed, index]), colormap)
            progress.step(index + 1, n)
        (tmp / SOURCE_NAME).write_text(source + "\n", encoding="utf-8")
    progress.info(f"{n} coarse maps written to {dest} ({source}).")
    return dest


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
                        progress: Progress | None = None) -> str:
    """Refine every coarse map into <output>/refined/, score coarse and refined maps against the masks.

    Writes metrics.csv (one row per source, every metric incl. per class) and metrics.md (coarse vs refined vs
    gain); returns the markdown. Both rows count the same pixels: those valid in mask, coarse and refined map.
    """
    from core.refinement.pipeline import RefineParams, refine_raster
    progress = progress or Progress()
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
            result = refine_raster(RefineParams(
                image_path=str(image), classification_path=str(coarse), output_path=str(refined),
                model_dir=model_dir, samples=samples, steps=steps, seed=seed, device=device,
                image_layer_name=image.name, classification_layer_name=f"{COARSE_DIR}/{coarse.name}"),
                SubProgress(progress, index / n, (index + 1) / n))
            changed.append(result.changed_fraction)
            truth, coarse_ids, refined_ids = (read_class_indices(p, classes) for p in (mask, coarse, refined))
            counted = (truth >= 0) & (coarse_ids >= 0) & (refined_ids >= 0)
            truth = np.where(counted, truth, -1)
            metrics["coarse"].add(np.where(counted, coarse_ids, 0), truth)
            metrics["refined"].add(np.where(counted, refined_ids, 0), truth)
        results = {source: m.result() for source, m in metrics.items()}
        _write_csv(tmp / "metrics.csv", results)
        table = _markdown(results, data, model_dir, n, samples, steps, float(np.mean(changed)))
        (tmp / "metrics.md").write_text(table, encoding="utf-8")
    return table


def _write_csv(path: Path, results: dict[str, dict[str, float]]) -> None:
    columns = list(next(iter(results.values())))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["source", *columns])
        for source, row in results.items():
            writer.writerow([source, *(f"{row[c]:.6g}" for c in columns)])


def _markdown(results: dict[str, dict[str, float]], data: str, model_dir: str, images: int, samples: int,
              steps: int, changed: float) -> str:
    coarse, refined = results["coarse"], results["refined"]
    sampler = f"{steps} DDIM steps" if steps else "the card's DDIM steps"
    lines = [f"Refinement of {Path(data).resolve().name}/{COARSE_DIR} ({coarse_source(data) or 'source unknown'})",
             (f"by {model_dir or 'the starter refiner'}: {images} images, {samples} sample(s) per tile, {sampler}; "
              f"{changed:.2%} of the pixels changed class."), "",
             "| metric | coarse | refined | gain |", "|---|---:|---:|---:|"]
    lines += [f"| {m} | {coarse[m]:.4f} | {refined[m]:.4f} | {refined[m] - coarse[m]:+.4f} |" for m in REPORTED_METRICS]
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------------------------
def add_coarse_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (images/, masks/, classes.json)")
    parser.add_argument("--output", default="", help="new or empty folder for the coarse maps (default DATA/coarse)")
    parser.add_argument("--model", default="", help="segmentation model directory whose predictions become the "
                        "coarse maps (default: the starter segmenter, unless --degrade is given alone)")
    parser.add_argument("--degrade", type=int, default=0, metavar="N",
                        help="move boundaries by up to N px: of the true masks, or of the predictions with --model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the boundary degradation")
    parser.add_argument("--batch-size", type=int, default=4, help="segmentation tiles per batch")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_coarse(args) -> None:
    progress = TqdmProgress("coarse-labels")
    dest = write_coarse_labels(args.data, args.output, args.model, args.degrade, args.seed, args.device,
                               args.batch_size, progress)
    progress.close()
    print(f"coarse maps written to {dest}")


def add_evaluate_arguments(parser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder with images/, masks/, coarse/, classes.json")
    parser.add_argument("--output", required=True, help="new or empty folder: refined/, metrics.csv, metrics.md")
    parser.add_argument("--model", default="", help="IDGBR model directory (default: the starter refiner)")
    parser.add_argument("--samples", type=int, default=1, help="sampler runs per tile, probabilities averaged")
    parser.add_argument("--steps", type=int, default=0, help="DDIM steps (0: the model card's, 25)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def main_evaluate(args) -> None:
    progress = TqdmProgress("evaluate-refinement")
    table = evaluate_refinement(args.data, args.output, args.model, args.samples, args.steps, args.limit,
                                args.seed, args.device, progress)
    progress.close()
    print(table)
