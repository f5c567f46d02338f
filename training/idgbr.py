"""`python -m training idgbr-embed` / `idgbr-vae` / `idgbr`: the three training stages of IDGBR refinement.

1. idgbr-embed: the label embedding (class map <-> 3-channel image in [-1, 1]) on random class maps.
2. idgbr-vae (small preset): a small AutoencoderKL on image patches and embedded mask patches; afterwards its
   scaling factor is set to 1 / std of its latents (how SD's 0.18215 was chosen), so that the diffusion
   model sees unit-variance latents.
3. idgbr: the refinement diffusion model on images/ + masks/ + coarse/ triplets (coarse maps from
   `python -m training coarse-labels`). Embedding and VAE come from the stages above (sd15: SD's VAE) and
   stay frozen; only the denoiser, the guidance modules and the REPA projector train. With `init` it starts
   from a trained idgbr model instead (all its weights, its embedding and VAE included), e.g. to go on training
   on other coarse maps without repeating stages 1 and 2.

The small preset's pseudo-siamese encoder is a frozen copy of the randomly initialised UNet, made when the
model is built. That is the honest small-scale analogue of the paper, whose copy is SD1.5's pretrained
encoder: random frozen convolutions still carry the conditions' spatial layout, and the trainable guidance
modules learn what to take from them, but the features are not the rich pretrained ones of sd15.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from core.checkpoint import ClassInfo, ModelCard, Normalization, load_card, load_into
from core.data.folder import FolderDataset, PatchDataset, band_ranges
from core.raster import hex_to_rgba
from core.refinement.embedding import NOISE_STD, LabelEmbedding, embedding_loss, random_class_maps
from core.refinement.model import (GUIDANCE_SCALE, REPA_WEIGHT, SAMPLING_STEPS, STRENGTH, TASK, architecture_for,
                                   build_model, noise_scheduler, refine, training_loss)
from training.autoencoder import autoencoder_loss, latent_scaling_factor, loss_description
from training.config import DiffusionLossConfig, RunConfig, add_run_arguments, config_from_args
from training.idgbr_data import TripletPatchDataset, coarse_source, list_triplets
from training.trainer import Trainer, TrainingError, seed_everything, stacked

log = logging.getLogger("rs_diffusion")
EMBEDDING_TASK, VAE_TASK = "idgbr-embedding", "idgbr-vae"
DINOV2_SIZE = 224       # REPA's DINOv2 input size: 16 x 16 patch tokens at patch 14
PREVIEW_COUNT = 4       # fixed patches refined for the preview grids


def dataset_card_fields(data: FolderDataset) -> dict:
    """The card fields every IDGBR stage takes from the dataset: classes, bands and per-band range."""
    low, span = band_ranges(data.pairs)
    return {"classes": data.classes, "bands": list(data.bands), "normalization": Normalization(offset=low, scale=span)}


def load_embedding(model_dir: str, classes: list[ClassInfo]) -> LabelEmbedding:
    """A trained idgbr-embed model, checked against the dataset's class values (index i <-> classes[i])."""
    card = load_card(model_dir, task=EMBEDDING_TASK)
    if [c.value for c in card.classes] != [c.value for c in classes]:
        raise ValueError(f"Embedding '{card.name}' ({model_dir}) was trained for the class values "
                         f"{[c.value for c in card.classes]}; the dataset has {[c.value for c in classes]}.")
    return load_into(LabelEmbedding(card.architecture["classes"]), model_dir).requires_grad_(False).eval()


# --- stage 1: label embedding -----------------------------------------------------------------------------
@dataclass(kw_only=True)
class EmbeddingTrainConfig(RunConfig):
    """Only the classes.json (and band names, for the card) of `data` are used."""
    map_size: int = 32
    batch_size: int = 32
    steps: int = 2000
    lr: float = 1e-2
    checkpoint_every: int = 500


class RandomClassMaps(torch.utils.data.Dataset):
    """Fresh uniform random class maps on every access (torch's RNG, seeded by the trainer); one epoch = `length`."""

    def __init__(self, n_classes: int, size: int, length: int):
        self.n_classes, self.size, self.length = n_classes, size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        return random_class_maps(1, self.size, self.n_classes)[0]


@torch.no_grad()
def round_trip_accuracy(embedding: LabelEmbedding, size: int = 32, noise_std: float = 0.0, seed: int = 0) -> float:
    """Share of pixels of random class maps that decode(encode(labels) + noise) gives back."""
    device = embedding.table.weight.device
    generator = torch.Generator().manual_seed(seed)
    labels = random_class_maps(8, size, embedding.n_classes, generator=generator)
    encoded = embedding.encode(labels.to(device))
    encoded = encoded + noise_std * torch.randn(encoded.shape, generator=generator).to(device)
    return float((embedding.decode(encoded).argmax(1).cpu() == labels).float().mean())


def train_embedding(cfg: EmbeddingTrainConfig) -> Path:
    data = FolderDataset.open(cfg.data)
    n_classes = len(data.classes)
    seed_everything(cfg.seed)
    embedding = LabelEmbedding(n_classes)
    run = Path(cfg.output)
    trainer = Trainer(embedding, cfg.train_settings())
    loader = trainer.loader(RandomClassMaps(n_classes, cfg.map_size, cfg.batch_size * 100), cfg.batch_size,
                            cfg.num_workers)

    def validate(net):
        return {"round_trip_accuracy": round_trip_accuracy(net, cfg.map_size),
                "noisy_accuracy": round_trip_accuracy(net, cfg.map_size, NOISE_STD)}

    metrics = trainer.fit(loader, lambda net, labels: embedding_loss(net, labels), validate)
    return trainer.export(ModelCard(
        task=EMBEDDING_TASK, name=cfg.name or run.name, architecture={"classes": n_classes},
        tile_size=cfg.map_size, training_data=f"uniform random {cfg.map_size} px maps of the {n_classes} classes of "
                                              f"{Path(cfg.data).resolve().name}",
        metrics={k: round(v, 4) for k, v in metrics.items()},
        extra={"steps": trainer.step, "noise_std": NOISE_STD,
               "normalization": "placeholder: the dataset's band range, unused by the embedding"},
        **dataset_card_fields(data)))


# --- stage 2: the small VAE -----------------------------------------------------------------------------
@dataclass(kw_only=True)
class VaeTrainConfig(RunConfig):
    """`batch_size` counts patches: each adds its image and its embedded mask to the step's batch."""
    embedding: str                 # the idgbr-embed model directory
    patch_size: int = 64
    samples_per_image: int = 4
    steps: int = 3000
    kl_weight: float = 1e-4        # on the per-element KL; small: latents stay informative, scale set afterwards
    val_every: int = 500
    checkpoint_every: int = 500


def vae_inputs(embedding: LabelEmbedding, image01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The VAE's two kinds of input in one batch: images in [-1, 1] and embedded masks (unlabelled -> class 0)."""
    with torch.no_grad():
        return torch.cat([image01 * 2 - 1, embedding.encode(labels.clamp(min=0))])


@torch.no_grad()
def vae_quality(vae: AutoencoderKL, embedding: LabelEmbedding, image01: torch.Tensor,
                labels: torch.Tensor) -> dict[str, float]:
    """Image PSNR (dB, on the [0, 1] scale) and label round-trip accuracy (embed -> VAE -> decode -> argmax)."""
    image, labels = image01 * 2 - 1, labels.clamp(min=0)
    recon = vae.decode(vae.encode(image).latent_dist.mode()).sample.clamp(-1, 1)
    psnr = 10 * math.log10(4 / max(F.mse_loss(recon, image).item(), 1e-10))
    embedded = vae.decode(vae.encode(embedding.encode(labels)).latent_dist.mode()).sample
    accuracy = (embedding.decode(embedded).argmax(1) == labels).float().mean().item()
    return {"image_psnr": psnr, "label_accuracy": accuracy}


def train_vae(cfg: VaeTrainConfig) -> Path:
    data = FolderDataset.open(cfg.data)
    fields = dataset_card_fields(data)
    low, span = fields["normalization"].offset, fields["normalization"].scale
    _check_rgb(data)
    embedding = load_embedding(cfg.embedding, data.classes)
    vae_config = architecture_for("small", len(data.classes))["vae"]
    seed_everything(cfg.seed)
    vae = AutoencoderKL.from_config(vae_config)
    run = Path(cfg.output)
    trainer = Trainer(vae, cfg.train_settings())
    embedding.to(trainer.device)
    dataset = PatchDataset(data.pairs, data.classes, low, span, cfg.patch_size, cfg.samples_per_image, train=True)
    loader = trainer.loader(dataset, cfg.batch_size, cfg.num_workers)
    fixed = PatchDataset(data.pairs[:PREVIEW_COUNT], data.classes, low, span, cfg.patch_size, train=False)
    fixed_image, fixed_labels = (t.to(trainer.device) for t in stacked(fixed))

    def loss_fn(net, batch):
        return autoencoder_loss(net, vae_inputs(embedding, *batch), cfg.kl_weight)

    def validate(net):
        net.eval()
        return vae_quality(net, embedding, fixed_image, fixed_labels)

    metrics = trainer.fit(loader, loss_fn, validate)
    trainer.eval_model.eval()
    factor = latent_scaling_factor(trainer.eval_model, (vae_inputs(embedding, image.to(trainer.device),
                                                                   labels.to(trainer.device))
                                                        for image, labels in loader))
    return trainer.export(ModelCard(
        task=VAE_TASK, name=cfg.name or run.name, tile_size=cfg.patch_size,
        architecture={"preset": "small", "classes": len(data.classes),
                      "vae": {**vae_config, "scaling_factor": round(factor, 6)}},
        training_data=f"{Path(cfg.data).resolve().name}: {len(data.pairs)} images + their embedded masks",
        metrics={k: round(v, 4) for k, v in metrics.items()},
        extra={"steps": trainer.step, "loss": loss_description(cfg.kl_weight),
               "embedding": _source(cfg.embedding), "dtype": data.first.dtype,
               "metrics_on": f"top-left {cfg.patch_size} px patches of the first {len(fixed)} training images",
               "scaling": "image in [-1, 1] = 2 (raw - mean) / std - 1 per band (dataset range)"},
        **fields))


def _check_rgb(data: FolderDataset) -> None:
    if len(data.bands) != 3:
        raise ValueError(f"IDGBR encodes images with an RGB autoencoder; the dataset has {len(data.bands)} bands "
                         f"({', '.join(data.bands)}). Keep three bands in images/.")


def _source(model_dir: str) -> str:
    """A model directory as the cards cite it: its name and folder name (no machine-specific path)."""
    return f"{load_card(model_dir).name} ({Path(model_dir).resolve().name})"


# --- stage 3: the refinement diffusion model ----------------------------------------------------------------
@dataclass(kw_only=True)
class IdgbrTrainConfig(DiffusionLossConfig, RunConfig):
    """`data` holds images/, masks/, coarse/ and classes.json (or the coarse maps are in `coarse`)."""
    coarse: str = ""               # folder of the coarse maps (coarse-labels --output); empty: DATA/coarse
    embedding: str = ""            # the idgbr-embed model directory (not with `init`)
    vae: str = ""                  # small preset: the idgbr-vae model directory (not with `init`)
    init: str = ""                 # an idgbr model directory to start from: all its weights (embedding, VAE,
                                   # siamese copy, denoiser, guidance) and its architecture; retrains on new
                                   # coarse maps without repeating stages 1 and 2
    preset: str = "small"          # "small" | "sd15"
    sd_path: str = ""              # sd15: a local Stable Diffusion 1.5 diffusers folder
    dinov2: str = ""               # optional LOCAL timm DINOv2 weights file for REPA; empty: REPA off
    dinov2_model: str = "vit_small_patch14_dinov2"
    repa_steps: int = 200          # REPA only during the first steps (paper)
    patch_size: int = 64
    batch_size: int = 4
    samples_per_image: int = 4
    steps: int = 5000
    lr: float = 1e-4               # the paper's 1e-5 is for the pretrained sd15 UNet
    weight_decay: float = 1e-2
    ema_decay: float = 0.999
    val_every: int = 1000          # refine fixed patches into a preview grid this often; 0: never
    guidance_scale: float = GUIDANCE_SCALE   # CFG weight stored in the card: what previews and users sample with
    sampling_choice: str = ""      # the card's record of how guidance and strength were chosen (a measurement)
    train_siamese: bool = False    # unfreeze the pseudo-siamese copy: frozen is the paper's (SD1.5's pretrained
                                   # encoder); the small preset's copy is of random weights, frozen it stays random
    strength: float = STRENGTH     # share of the DDIM chain the card's sampler runs from the noised coarse map
                                   # (1: the paper, from pure noise); training draws t from that share only
    max_entropy: float = 1.0       # the card's entropy gate: refined pixels above it keep the coarse class (1: none)
    checkpoint_every: int = 500


class Dinov2Tokens:
    """Frozen DINOv2 loaded from a local timm weights file: patch tokens (B, N, D) of images in [-1, 1], for REPA."""

    def __init__(self, model_name: str, weights: str):
        import timm
        if not Path(weights).is_file():
            raise FileNotFoundError(f"DINOv2 weights file '{weights}' not found (weights are never downloaded).")
        self.net = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)},
                                     img_size=DINOV2_SIZE).eval().requires_grad_(False)
        self.dim = self.net.num_features
        self.mean = torch.tensor(self.net.pretrained_cfg["mean"])[:, None, None]
        self.std = torch.tensor(self.net.pretrained_cfg["std"])[:, None, None]

    def to(self, device) -> Dinov2Tokens:
        self.net, self.mean, self.std = self.net.to(device), self.mean.to(device), self.std.to(device)
        return self

    @torch.no_grad()
    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((image + 1) / 2, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bilinear", align_corners=False)
        return self.net.forward_features((x - self.mean) / self.std)[:, self.net.num_prefix_tokens:]


def build_refiner(cfg: IdgbrTrainConfig, classes: list[ClassInfo], repa_dim: int | None):
    """The IDGBR model with the trained embedding (and small VAE) loaded, and its architecture for the card;
    with `init`, that model's architecture and weights."""
    if cfg.init:
        return _init_refiner(cfg, classes, repa_dim)
    if not cfg.embedding:
        raise TrainingError("idgbr needs `embedding` (the idgbr-embed model directory) or `init` (an idgbr model "
                            "directory to start from).")
    sd_path = cfg.sd_path or None
    architecture = architecture_for(cfg.preset, len(classes), sd_path, repa_dim)
    if cfg.preset == "small":
        if not cfg.vae:
            raise TrainingError("The small preset needs `vae`: the model directory written by `idgbr-vae`.")
        architecture["vae"] = load_card(cfg.vae, task=VAE_TASK).architecture["vae"]
    elif cfg.vae:
        log.info("sd15 preset: `vae` is ignored, SD1.5's own VAE is used.")
    seed_everything(cfg.seed)   # same config, same initial weights (and the same siamese copy)
    model = build_model(architecture, sd_path if cfg.preset == "sd15" else None)
    embedding = load_embedding(cfg.embedding, classes)
    model.label_embedding.load_state_dict(embedding.state_dict())
    if cfg.preset == "small":
        load_into(model.vae, cfg.vae)
    return model, architecture


def _init_refiner(cfg: IdgbrTrainConfig, classes: list[ClassInfo], repa_dim: int | None):
    card = load_card(cfg.init, task=TASK)
    if cfg.embedding or cfg.vae:
        raise TrainingError(f"`init` ({cfg.init}) brings its own label embedding and autoencoder: leave out "
                            "`embedding` and `vae`.")
    if [c.value for c in card.classes] != [c.value for c in classes]:
        raise ValueError(f"Refiner '{card.name}' ({cfg.init}) was trained for the class values "
                         f"{[c.value for c in card.classes]}; the dataset has {[c.value for c in classes]}.")
    if card.architecture.get("preset", "small") != cfg.preset:
        raise TrainingError(f"`init` model '{card.name}' has the preset {card.architecture.get('preset')}; this run "
                            f"asks for {cfg.preset}: they must match.")
    if repa_dim is not None and card.architecture.get("repa_dim") != repa_dim:
        raise TrainingError(f"`init` model '{card.name}' has a REPA projector for {card.architecture.get('repa_dim')}"
                            f"-dimensional features, the DINOv2 of this run gives {repa_dim}: they must match.")
    model = load_into(build_model(card.architecture, cfg.sd_path or None), cfg.init)
    return model, card.architecture


def _stage_sources(cfg: IdgbrTrainConfig) -> dict[str, str]:
    """The card's record of where embedding and autoencoder (and, with `init`, all starting weights) came from."""
    if cfg.init:
        card = load_card(cfg.init, task=TASK)
        return {"init": _source(cfg.init), "embedding": card.extra.get("embedding", "unknown"),
                "vae": card.extra.get("vae", "unknown"), "init_steps": card.extra.get("steps")}
    return {"embedding": _source(cfg.embedding),
            "vae": _source(cfg.vae) if cfg.preset == "small" else f"SD1.5 ({Path(cfg.sd_path).resolve().name})"}


def train_idgbr(cfg: IdgbrTrainConfig) -> Path:
    if not 0 < cfg.max_entropy <= 1:
        raise TrainingError(f"`max_entropy` must be in (0, 1] (1: no gate), got {cfg.max_entropy:g}.")
    data = FolderDataset.open(cfg.data)
    _check_rgb(data)
    triplets = list_triplets(cfg.data, cfg.coarse)
    fields = dataset_card_fields(data)
    low, span = fields["normalization"].offset, fields["normalization"].scale
    dinov2 = Dinov2Tokens(cfg.dinov2_model, cfg.dinov2) if cfg.dinov2 else None
    if dinov2 is None:
        log.info("REPA off: no DINOv2 weights file given (`dinov2`).")
    model, architecture = build_refiner(cfg, data.classes, dinov2.dim if dinov2 else None)
    run = Path(cfg.output)
    model.siamese.requires_grad_(cfg.train_siamese)
    trainer = Trainer(model, cfg.train_settings(), parameters=model.diffusion_parameters())
    if trainer.dist.world > 1:
        raise TrainingError("idgbr trains in one process: its loss calls the model's parts directly, which "
                            "DistributedDataParallel cannot wrap.")
    dinov2 = dinov2.to(trainer.device) if dinov2 else None
    scheduler = noise_scheduler()
    criterion, loss_entry = cfg.loss_criterion()
    dataset = TripletPatchDataset(triplets, data.classes, low, span, cfg.patch_size, cfg.samples_per_image)
    loader = trainer.loader(dataset, cfg.batch_size, cfg.num_workers)
    preview = TripletPatchDataset(triplets[:PREVIEW_COUNT], data.classes, low, span, cfg.patch_size, train=False)
    preview_batch = stacked(preview)

    def loss_fn(net, batch):
        image, labels, coarse = batch
        tokens = dinov2(image) if dinov2 is not None and trainer.step < cfg.repa_steps else None
        return training_loss(net, scheduler, image, labels, coarse, dinov2_tokens=tokens, criterion=criterion,
                             strength=cfg.strength)["loss"]

    def preview_grid(net):
        image, labels, coarse = preview_batch
        refined = refine(net, image, coarse, guidance_scale=cfg.guidance_scale, seed=cfg.seed,
                         strength=cfg.strength).argmax(1).cpu()
        save_preview(run / f"samples_{trainer.step:06d}.png", image, coarse, refined, labels, data.classes)
        return {"coarse_accuracy": float((coarse == labels).float().mean()),
                "refined_accuracy": float((refined == labels).float().mean())}

    metrics = trainer.fit(loader, loss_fn, preview_grid)
    repa = (f"on: {cfg.dinov2_model} from {Path(cfg.dinov2).resolve()}, first {cfg.repa_steps} steps, "
            f"weight {REPA_WEIGHT}") if dinov2 else "off"
    return trainer.export(ModelCard(
        task=TASK, name=cfg.name or run.name, architecture=architecture, tile_size=cfg.patch_size,
        ground_resolution=round(data.first.resolution[0], 4) if data.first.crs_wkt else None,
        training_data=f"{Path(cfg.data).resolve().name}: {len(triplets)} image/mask/coarse triplets",
        metrics={k: round(v, 4) for k, v in metrics.items()},
        extra={**loss_entry, "steps": trainer.step, "dtype": data.first.dtype, "sampling_steps": SAMPLING_STEPS,
               "guidance_scale": cfg.guidance_scale, "strength": cfg.strength, "max_entropy": cfg.max_entropy,
               "preset": cfg.preset,
               "siamese": "trained" if cfg.train_siamese else "frozen",
               **({"sampling_choice": cfg.sampling_choice} if cfg.sampling_choice else {}), **_stage_sources(cfg),
               "coarse_source": coarse_source(cfg.data, cfg.coarse) or "unknown", "repa": repa, "lr": cfg.lr,
               "patch_size": cfg.patch_size, "batch_size": cfg.batch_size, "ema_decay": cfg.ema_decay,
               "scaling": "image in [-1, 1] = 2 (raw - mean) / std - 1 per band (dataset range)"},
        **fields))


def save_preview(path: Path, image: torch.Tensor, coarse: torch.Tensor, refined: torch.Tensor, truth: torch.Tensor,
                 classes: list[ClassInfo]) -> None:
    """One row per patch: image | coarse | refined | truth."""
    from PIL import Image
    palette = np.array([hex_to_rgba(c.color)[:3] for c in classes], dtype=np.uint8)
    rgb = ((image.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    rows = [np.concatenate([rgb[i], *(palette[m[i].numpy()] for m in (coarse, refined, truth))], axis=1)
            for i in range(len(rgb))]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# --- command line ----------------------------------------------------------------------------------------
def add_embed_arguments(parser) -> None:
    add_run_arguments(parser, "EmbeddingTrainConfig")


def main_embed(args) -> None:
    print(f"model written to {train_embedding(config_from_args(EmbeddingTrainConfig, args))}")


def add_vae_arguments(parser) -> None:
    add_run_arguments(parser, "VaeTrainConfig")


def main_vae(args) -> None:
    print(f"model written to {train_vae(config_from_args(VaeTrainConfig, args))}")


def add_arguments(parser) -> None:
    add_run_arguments(parser, "IdgbrTrainConfig")


def main(args) -> None:
    print(f"model written to {train_idgbr(config_from_args(IdgbrTrainConfig, args))}")
