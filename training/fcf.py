"""`python -m training fcf`: fit RDF-MIG's FCF autoencoder on the images of a change folder.

The first stage of RDF-MIG: one FCF (core.change.fcf) learns to reduce every image of dates A and B to one
channel (`code_channels`: k) and back; the joint diffusion model later trains on [fcf(A), fcf(B), mask] with it
frozen. Reads every image below DATA/A and DATA/B (label/ is not needed here) as random patches scaled to
[-1, 1] (8-bit: / 255, other types: each file's 0.1-99.9 percentile range, as core.data.images does). All images
must have the same band count (RGB or RGB+NIR): the model keeps the data's bands in their order. The loss is
L1 + (1 - SSIM);
validation = reconstruction PSNR / SSIM and the colour error (chroma_error) on a fixed set of training patches.
Writes `<output>/model` (task "fcf") plus training state, log.csv and curves.png.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.change.fcf import TASK, FCF, chroma_error, fcf_loss, psnr, ssim
from core.checkpoint import ModelCard, Normalization
from core.data.images import ImagePatchDataset, list_images
from core.data.scenes import scene_bands
from core.raster import RasterInfo, raster_info
from training.config import RunConfig, add_run_arguments, config_from_args
from training.trainer import Trainer, TrainingError, seed_everything

DATE_FOLDERS = ("A", "B")
VALIDATION_PATCHES = 32


@dataclass(kw_only=True)
class FcfTrainConfig(RunConfig):
    """`data` is a change folder: A/, B/ (and label/, unused here)."""
    width: int = 32                # channels of the hidden convolutions
    patch_size: int = 64
    batch_size: int = 16
    samples_per_image: int = 8
    steps: int = 1500
    weight_decay: float = 0.0
    code_channels: int = 1         # channels per date: 1 = the supplement's 3-channel feature image; 2 keeps colour
    code_noise: float = 0.02       # std of the noise added to the code in training (decoder robustness)
    checkpoint_every: int = 500


@dataclass
class DateImages:
    paths: list[Path]              # every image of A/ then B/
    counts: dict[str, int]         # images per date folder
    bands: list[str]               # band names in file order
    first: RasterInfo


def read_date_images(data: str | Path) -> DateImages:
    """The images of DATA/A and DATA/B, checked to share one band count (one FCF serves both dates)."""
    root = Path(data)
    missing = [name for name in DATE_FOLDERS if not (root / name).is_dir()]
    if missing:
        raise TrainingError(f"'{root}' is not a change folder: no {' or '.join(missing)}/ (expected A/, B/, label/).")
    per_date = {name: list_images(root / name) for name in DATE_FOLDERS}
    paths = [p for name in DATE_FOLDERS for p in per_date[name]]
    first = raster_info(paths[0])
    for path in paths[1:]:
        info = raster_info(path)
        if info.count != first.count:
            raise TrainingError(f"All images must have the same bands: '{path}' has {info.count} band(s), "
                                f"'{paths[0]}' has {first.count}.")
    return DateImages(paths, {name: len(found) for name, found in per_date.items()}, _band_names(first), first)


def _band_names(info: RasterInfo) -> list[str]:
    """The file's band descriptions; undescribed 3- and 4-band images are RGB and RGB+NIR."""
    unnamed = info.band_names == tuple(f"band {i + 1}" for i in range(info.count))
    if unnamed and info.count in (3, 4):
        return scene_bands(nir=info.count == 4)
    return list(info.band_names)


def validation_patches(dataset: ImagePatchDataset, seed: int) -> torch.Tensor:
    """A fixed (N, C, p, p) set in [-1, 1], spread over all images: the same for every validation."""
    count = min(VALIDATION_PATCHES, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.stack([dataset[i] for i in indices]) * 2 - 1


def train_fcf(cfg: FcfTrainConfig) -> Path:
    images = read_date_images(cfg.data)
    bands = len(images.bands)
    if not 1 <= cfg.code_channels <= bands:
        raise TrainingError(f"code_channels must be between 1 and the data's {bands} bands; got {cfg.code_channels}.")
    dataset = ImagePatchDataset(images.paths, cfg.patch_size, channels=bands, samples_per_image=cfg.samples_per_image)
    seed_everything(cfg.seed)   # same config, same initial weights
    model = FCF(bands, cfg.width, cfg.code_channels)
    run = Path(cfg.output)
    trainer = Trainer(model, cfg.train_settings())
    loader = trainer.loader(dataset, cfg.batch_size, cfg.num_workers)
    fixed = validation_patches(dataset, cfg.seed)

    def loss_fn(net, batch):
        return fcf_loss(net, batch * 2 - 1, cfg.code_noise)

    @torch.inference_mode()
    def validate(net):
        net.eval()
        device = next(net.parameters()).device
        x = fixed.to(device)
        reconstruction = torch.cat([net(chunk) for chunk in x.split(cfg.batch_size)])
        return {"psnr": psnr(reconstruction, x), "ssim": float(ssim((reconstruction + 1) / 2, (x + 1) / 2)),
                "chroma_error": chroma_error(reconstruction, x)}

    metrics = trainer.fit(loader, loss_fn, validate)
    # One raw range for the whole set: 8-bit data is exactly 0..255 -> [-1, 1]; other types are scaled per file
    # in training (and by the change datasets), so the card's range is the union of the files' ranges.
    low = min(r[0] for r in dataset.ranges)
    high = max(r[1] for r in dataset.ranges)
    first = images.first
    return trainer.export(ModelCard(
        task=TASK, name=cfg.name or run.name, architecture=model.architecture, bands=images.bands,
        normalization=Normalization(offset=[(low + high) / 2] * bands, scale=[(high - low) / 2] * bands),
        tile_size=cfg.patch_size, ground_resolution=round(first.resolution[0], 4) if first.crs_wkt else None,
        training_data=f"{Path(cfg.data).resolve().name}: {images.counts['A']} date-A + {images.counts['B']} "
                      f"date-B images",
        metrics={k: round(v, 4) for k, v in metrics.items()},
        extra={"steps": trainer.step, "dtype": first.dtype,
               "scaling": "x = (raw - mean) / std in [-1, 1] (8-bit: / 255; other types: each file's "
                          "0.1-99.9 percentile range)",
               "loss": "L1 + (1 - SSIM, 11 x 11 gaussian window, sigma 1.5)", "code_noise": cfg.code_noise,
               "interpretation": "our reading of RDF-MIG's FCF (the main paper is missing): a convolutional "
                                 f"autoencoder per image, bands -> {cfg.code_channels} channel(s) in [-1, 1] -> "
                                 "bands, shared by dates A and B, frozen while the diffusion model learns "
                                 "[fcf(A), fcf(B), 2 mask - 1]"}))


def add_arguments(parser) -> None:
    add_run_arguments(parser, "FcfTrainConfig")
    parser.add_argument("--code-channels", type=int,
                        help="override: channels per date (1: the supplement's 3-channel feature image; "
                             "2 keeps colour)")


def main(args) -> None:
    print(f"model written to {train_fcf(config_from_args(FcfTrainConfig, args))}")
