"""Golden outputs of every diffusion sampler and raster pipeline, for fixed seeds on tiny models.

Issue 16, item 6: before the sampling loops move into one core/diffusion/ layer, these cases pin what
the current code computes, so the refactor can show it changed nothing (tests/test_golden_outputs.py).
Each case builds a tiny model deterministically (torch.manual_seed before construction; weights that
start at zero, such as SAR-JointNet's couplings and IDGBR's guidance, are perturbed with a seeded
generator so that the paths they gate are exercised), runs the method's sampler or pipeline for a few
steps on tiny inputs with fixed seeds, and returns a dict of small numpy arrays. Inputs are drawn from
numpy's PCG64 (stable across numpy versions), not from the procedural data generators, so the goldens
depend only on the code under test and the libraries (torch, diffusers, timm, smp, GDAL).

Every case runs with one torch thread and with the global torch / numpy / random generators seeded and
then restored (CPU float reductions may depend on the thread count). Arrays with more than MAX_VALUES
values are stored as a strided subsample plus float64 row and column means over the last two axes
(see `pin`); everything else is stored whole.

    python -m tests.golden --record [case ...]   # write tests/golden/<case>.npz
    python -m tests.golden --check [case ...]    # recompute and compare (exit 1 on a difference)
"""
from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MAX_VALUES = 4096        # arrays up to this size are stored whole
# Tolerances. On the recording machine the arrays reproduce bit for bit; another CPU runs other kernels (AVX2 vs
# AVX-512, FMA or not: ATEN_CPU_CAPABILITY=default reproduces it) and moves float outputs by up to ~1e-5 and
# a squared-norm gain by ~1e-4 relative, and an argmax sitting on a near-tie may then flip (2 of 512 labels
# on one CI machine). A changed computation moves most values by far more than that.
ATOL = 1e-5              # float values: |actual - golden| <= ATOL + RTOL * |golden|
RTOL = 1e-4
MAX_FLIPPED_SHARE = 0.01 # integer values (labels, classes, counts): at most this share may differ
UTM33_EPSG = 32633
TRANSFORM = (0.5, 0.0, 500000.0, 0.0, -0.5, 5600000.0)

Case = Callable[[Path], dict[str, np.ndarray]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


# --- helpers ---------------------------------------------------------------------------------------------
def to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def pin(out: dict[str, np.ndarray], name: str, value) -> None:
    """Store `value` under `name`: whole if small, else a strided subsample (~MAX_VALUES values) and the
    float64 means along each of the last two axes (a change anywhere moves a mean by its share)."""
    array = to_numpy(value)
    if array.size <= MAX_VALUES:
        out[name] = array.copy()
        return
    step = math.ceil(array.size / MAX_VALUES)
    out[f"{name}__every{step}"] = array.reshape(-1)[::step].copy()
    wide = array.astype(np.float64)
    out[f"{name}__row_means"] = wide.mean(axis=-1)
    out[f"{name}__col_means"] = wide.mean(axis=-2)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def deterministic(seed: int = 0):
    """One torch thread and seeded global generators for the case; the caller's state comes back after."""
    threads = torch.get_num_threads()
    numpy_state, python_state = np.random.get_state(), random.getstate()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


def compute(name: str, workdir: Path) -> dict[str, np.ndarray]:
    """Run one case in `workdir` (a temporary folder for pipelines' models and rasters)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with deterministic():
        return {key: np.asarray(value) for key, value in CASES[name](workdir).items()}


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.npz"


def load_golden(name: str) -> dict[str, np.ndarray]:
    with np.load(golden_path(name), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def differences(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> list[str]:
    """What differs (keys, shapes, dtypes, values beyond the tolerances above), one line each; empty when
    they agree."""
    problems = []
    if set(actual) != set(expected):
        problems.append(f"keys differ: missing {sorted(set(expected) - set(actual))}, "
                        f"unexpected {sorted(set(actual) - set(expected))}")
    for key in sorted(set(actual) & set(expected)):
        a, e = actual[key], expected[key]
        if a.shape != e.shape or a.dtype != e.dtype:
            problems.append(f"{key}: {a.dtype}{list(a.shape)} vs golden {e.dtype}{list(e.shape)}")
            continue
        if not a.size:
            continue
        diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
        if np.issubdtype(e.dtype, np.floating):
            beyond = ~(diff <= ATOL + RTOL * np.abs(e.astype(np.float64)))      # NaN where the golden has none
            if beyond.any():
                problems.append(f"{key}: max |diff| {np.nanmax(diff):.3g} at "
                                f"{np.unravel_index(np.nanargmax(diff), diff.shape)}, {int(beyond.sum())} of "
                                f"{diff.size} values beyond {ATOL:g} + {RTOL:g} x |golden|")
        elif (diff > 0).mean() > MAX_FLIPPED_SHARE:
            problems.append(f"{key}: {int((diff > 0).sum())} of {diff.size} values differ "
                            f"(more than {MAX_FLIPPED_SHARE:.0%})")
    return problems


def write_raster(path: Path, array: np.ndarray, nodata=None, band_names=None) -> Path:
    """A GeoTIFF on a UTM 33N grid at 0.5 m."""
    import rasterio
    from core.raster import write_geotiff
    crs = rasterio.crs.CRS.from_epsg(UTM33_EPSG).to_wkt()
    return write_geotiff(path, array, crs_wkt=crs, transform=TRANSFORM, nodata=nodata, band_names=band_names)


def read_raster(path: Path) -> np.ndarray:
    import rasterio
    with rasterio.open(path) as src:
        return src.read()


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], scale: int = 4) -> np.ndarray:
    """Values in [0, 1] with structure at `scale` px (block noise, bilinear-ish by repeat + box blur) plus
    pixel noise, so that models see edges and texture rather than white noise only."""
    *lead, h, w = shape
    coarse = rng.random((*lead, h // scale + 2, w // scale + 2))
    big = np.repeat(np.repeat(coarse, scale, axis=-2), scale, axis=-1)[..., :h + scale, :w + scale]
    kernel = np.ones(scale) / scale
    big = np.apply_along_axis(lambda r: np.convolve(r, kernel, "same"), -1, big)
    big = np.apply_along_axis(lambda c: np.convolve(c, kernel, "same"), -2, big)
    field = big[..., scale // 2:scale // 2 + h, scale // 2:scale // 2 + w]
    return np.clip(0.8 * field + 0.2 * rng.random(field.shape), 0.0, 1.0)


# --- SatSynth -------------------------------------------------------------------------------------------
SATSYNTH_BANDS, SATSYNTH_CLASSES = 3, 5
TINY_UNET = {"block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4}


def satsynth_architecture(sample_size: int = 8) -> dict:
    """The 'small' preset shrunk to 8/16 channels, attention at the lower level (as the preset)."""
    from core.synthesis.satsynth import architecture_for
    arch = architecture_for("small", SATSYNTH_BANDS, SATSYNTH_CLASSES)
    arch["unet"].update(TINY_UNET, sample_size=sample_size, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                        up_block_types=["AttnUpBlock2D", "UpBlock2D"])
    return arch


def pin_pairs(out: dict, prefix: str, pairs) -> None:
    pin(out, f"{prefix}images", pairs.images)
    pin(out, f"{prefix}labels", pairs.labels)
    pin(out, f"{prefix}probabilities", pairs.probabilities)


@case
def satsynth_ddpm(workdir: Path) -> dict[str, np.ndarray]:
    """satsynth.sample(sampler="ddpm"): all T = 1000 ancestral steps, 1 pair of 8 px, seed 3."""
    from core.synthesis.satsynth import build_denoiser, sample
    arch = satsynth_architecture()
    torch.manual_seed(10)
    model = build_denoiser(arch)
    out: dict[str, np.ndarray] = {}
    pin_pairs(out, "", sample(model, count=1, sampler="ddpm", seed=3, size=8))
    return out


@case
def satsynth_ddim(workdir: Path) -> dict[str, np.ndarray]:
    """satsynth.sample(sampler="ddim"): 2 pairs of 8 px, 4 steps, eta 1 (default, seed 5) and eta 0 (seed 6)."""
    from core.synthesis.satsynth import DDIM_ETA, build_denoiser, sample
    arch = satsynth_architecture()
    torch.manual_seed(11)
    model = build_denoiser(arch)
    out: dict[str, np.ndarray] = {"eta_default": np.asarray(DDIM_ETA)}
    pin_pairs(out, "eta1_", sample(model, count=2, sampler="ddim", steps=4, seed=5, size=8))
    pin_pairs(out, "eta0_", sample(model, count=2, sampler="ddim", steps=4, seed=6, size=8, eta=0.0))
    return out


@case
def satsynth_sr(workdir: Path) -> dict[str, np.ndarray]:
    """satsynth.super_resolve (x2 stage, v-prediction, DDIM): 2 seeded 8 px pairs -> 16 px, 3 steps, seed 7."""
    from core.data.generated import GeneratedPairs
    from core.synthesis.satsynth import build_denoiser, sr_architecture_for, super_resolve
    arch = sr_architecture_for("small", SATSYNTH_BANDS, SATSYNTH_CLASSES)
    arch["unet"].update(TINY_UNET, sample_size=16, down_block_types=["DownBlock2D"] * 2,
                        up_block_types=["UpBlock2D"] * 2)
    torch.manual_seed(12)
    model = build_denoiser(arch)
    g = generator(20)
    low = GeneratedPairs(images=torch.rand(2, SATSYNTH_BANDS, 8, 8, generator=g),
                         labels=torch.randint(0, SATSYNTH_CLASSES, (2, 8, 8), generator=g), probabilities=None)
    out: dict[str, np.ndarray] = {}
    pin_pairs(out, "", super_resolve(model, low, steps=3, seed=7))
    return out


# --- SAR-JointNet ---------------------------------------------------------------------------------------
@case
def sar_jointnet(workdir: Path) -> dict[str, np.ndarray]:
    """jointnet.sample_pairs (Eq. 21 DDIM, eta 0): 2 pairs of 16 px, 3 classes, b = 0.4, 3 steps, seed 11;
    both couplings perturbed (they start at zero) so that the two branches interact."""
    from core.oilspill.jointnet import architecture_for, build_jointnet, sample_pairs
    arch = architecture_for("small", 3, 0.4)
    arch["sample_size"] = 16
    arch["unet"] = {**TINY_UNET, "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}
    torch.manual_seed(13)
    model = build_jointnet(arch)
    g = generator(21)
    with torch.no_grad():
        for coupling in model.couplings():
            for conv in coupling.modules():
                if isinstance(conv, torch.nn.Conv2d):
                    conv.weight.copy_(0.05 * torch.randn(conv.weight.shape, generator=g))
    pairs = sample_pairs(model, count=2, steps=3, seed=11)
    out: dict[str, np.ndarray] = {}
    for key in ("images", "labels", "probabilities", "logits"):
        pin(out, key, getattr(pairs, key))
    return out


# --- RDF-MIG --------------------------------------------------------------------------------------------
def rdfmig_model(representation: str, bands: int, vae=None, patch_size: int | None = None, seed: int = 14):
    from core.change.fcf import FCF
    from core.change.rdfmig import RdfmigModel, architecture_for, build_denoiser
    arch = architecture_for("small", representation, bands, vae, patch_size)
    arch["unet"].update(TINY_UNET, down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                        up_block_types=["AttnUpBlock2D", "UpBlock2D"])
    if vae is None:
        arch["unet"]["sample_size"] = 16
    torch.manual_seed(seed)
    denoiser = build_denoiser(arch)
    fcf = FCF(bands, width=8) if representation == "fcf" else None
    return RdfmigModel(arch, denoiser, fcf, vae).eval()


def pin_triplets(out: dict, triplets) -> dict[str, np.ndarray]:
    for key in ("a", "b", "mask"):
        pin(out, key, getattr(triplets, key))
    return out


@case
def rdfmig_fcf(workdir: Path) -> dict[str, np.ndarray]:
    """RdfmigModel.sample, FCF representation (RGB, width-8 FCF): 2 triplets of 16 px, DDIM-3, seed 1."""
    return pin_triplets({}, rdfmig_model("fcf", 3).sample(count=2, steps=3, seed=1, size=16))


@case
def rdfmig_concat(workdir: Path) -> dict[str, np.ndarray]:
    """RdfmigModel.sample, concat representation (RGB+NIR: 9 channels): 1 triplet of 16 px, DDIM-3, seed 2."""
    return pin_triplets({}, rdfmig_model("concat", 4, seed=15).sample(count=1, steps=3, seed=2, size=16))


@case
def rdfmig_latent(workdir: Path) -> dict[str, np.ndarray]:
    """RdfmigModel.sample, latent variant (tiny 2x AutoencoderKL, unclipped latents): 1 triplet of 16 px,
    DDIM-3, seed 3."""
    from diffusers import AutoencoderKL
    torch.manual_seed(16)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                        latent_channels=4, norm_num_groups=8, sample_size=16, scaling_factor=0.5)
    model = rdfmig_model("fcf", 3, vae=vae.eval(), patch_size=16, seed=17)
    return pin_triplets({}, model.sample(count=1, steps=3, seed=3, size=16))


# --- IDGBR ----------------------------------------------------------------------------------------------
IDGBR_CLASSES = [(0, "background", "#000000"), (1, "building", "#d9463b"), (2, "road", "#9a9a9a"),
                 (3, "water", "#2060c0")]


def idgbr_architecture(n_classes: int) -> dict:
    """The 'small' preset shrunk (as tests/test_idgbr_model.py): 8/16 channels, a 2x VAE."""
    from core.refinement.model import architecture_for
    arch = architecture_for("small", n_classes)
    arch["unet"].update(block_out_channels=[8, 8, 16, 16], cross_attention_dim=8, attention_head_dim=2,
                        norm_num_groups=4, sample_size=8)
    arch["vae"].update(down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                       block_out_channels=[8, 8], norm_num_groups=4, sample_size=16)
    arch.update(guidance_head_dim=4, repa_hidden=16)
    return arch


def idgbr_model(n_classes: int, seed: int = 18):
    """Seeded random weights with the (zero-initialised) guidance perturbed, so conditional != plain."""
    from core.refinement.model import build_model
    torch.manual_seed(seed)
    model = build_model(idgbr_architecture(n_classes))
    g = generator(seed + 100)
    with torch.no_grad():
        for module in model.guidance.levels:
            for layer in (module.fuse, module.to_out):
                layer.weight.copy_(0.2 * torch.randn(layer.weight.shape, generator=g))
    return model.eval()


@case
def idgbr_refine(workdir: Path) -> dict[str, np.ndarray]:
    """refinement.model.refine: 2 tiles of 16 px, 4 classes; CFG w = 3 (predict_cfg, 3 steps, seed 1) and
    w = 1 (predict alone, 2 steps, seed 2); and predict_cfg's two eps at t = 601 on seeded latents."""
    from core.refinement.model import refine
    model = idgbr_model(len(IDGBR_CLASSES))
    g = generator(22)
    image = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    coarse = torch.randint(0, len(IDGBR_CLASSES), (2, 16, 16), generator=g)
    out: dict[str, np.ndarray] = {}
    pin(out, "cfg_probabilities", refine(model, image, coarse, steps=3, guidance_scale=3.0, seed=1))
    pin(out, "plain_probabilities", refine(model, image, coarse, steps=2, guidance_scale=1.0, seed=2))
    with torch.inference_mode():
        conditions = model.condition_features(model.encode_image(image), model.encode_labels(coarse))
        z = torch.randn(2, 4, 8, 8, generator=g)
        eps_uncond, eps_cond = model.predict_cfg(z, torch.tensor(601), conditions)
    pin(out, "eps_uncond", eps_uncond)
    pin(out, "eps_cond", eps_cond)
    return out


@case
def idgbr_refine_raster(workdir: Path) -> dict[str, np.ndarray]:
    """refinement.pipeline.refine_raster: 24 x 40 px RGB + 3-class map, tiles of 16 px (overlap 4), 2 samples
    per tile, DDIM-2, w = 3, seed 5, batch 3; the refined classes and the uncertainty raster."""
    from core.checkpoint import ClassInfo, ModelCard, Normalization, save_model
    from core.refinement.model import TASK
    from core.refinement.pipeline import RefineParams, refine_raster
    classes = IDGBR_CLASSES[:3]
    model = idgbr_model(len(classes), seed=19)
    card = ModelCard(task=TASK, name="golden refiner", architecture=model.architecture,
                     bands=["red", "green", "blue"], normalization=Normalization(offset=[0.0] * 3, scale=[255.0] * 3),
                     classes=[ClassInfo(v, n, c) for v, n, c in classes], tile_size=16,
                     extra={"dtype": "uint8", "sampling_steps": 2, "guidance_scale": 3.0})
    model_dir = save_model(workdir / "refiner", card, model.state_dict())
    rng = np.random.default_rng(23)
    image = (1 + 254 * smooth_field(rng, (3, 24, 40))).astype(np.uint8)
    image[:, 3:6, 30:34] = 0                                   # nodata patch
    coarse = (smooth_field(rng, (24, 40), scale=6) * 3).astype(np.uint8).clip(0, 2)
    coarse[:1] = 255                                           # nodata row
    write_raster(workdir / "image.tif", image, nodata=0)
    write_raster(workdir / "classes.tif", coarse, nodata=255)
    params = RefineParams(str(workdir / "image.tif"), str(workdir / "classes.tif"), str(workdir / "refined.tif"),
                          model_dir=str(model_dir), samples=2, uncertainty_path=str(workdir / "uncertainty.tif"),
                          tile_size=16, overlap=4, batch_size=3, seed=5, device="cpu")
    result = refine_raster(params)
    out: dict[str, np.ndarray] = {"changed_fraction": np.asarray(result.changed_fraction)}
    pin(out, "classes", read_raster(workdir / "refined.tif"))
    pin(out, "uncertainty", read_raster(workdir / "uncertainty.tif"))
    return out


# --- fusion: DDFM and Dig2DIG ---------------------------------------------------------------------------
def fusion_prior():
    """A 3-channel prior: the 'small' preset (fully convolutional, scale-shift) shrunk to 8/16 channels."""
    from diffusers import UNet2DModel
    from core.checkpoint import ModelCard, Normalization
    from core.fusion.prior import TASK, FusionPrior, architecture_for
    arch = architecture_for("small", 16)
    arch["unet"].update(TINY_UNET, down_block_types=["DownBlock2D"] * 2, up_block_types=["UpBlock2D"] * 2)
    torch.manual_seed(24)
    unet = UNet2DModel(**arch["unet"])
    card = ModelCard(task=TASK, name="golden prior", architecture=arch, bands=["red", "green", "blue"],
                     normalization=Normalization([0.5] * 3, [0.5] * 3), tile_size=16)
    return FusionPrior(unet, card).eval()


def fusion_sources() -> tuple[torch.Tensor, torch.Tensor]:
    """(infrared, visible) luma (2, 1, 16, 16) in [-1, 1]: different structure, so their gains differ."""
    rng = np.random.default_rng(25)
    infrared = smooth_field(rng, (2, 1, 16, 16), scale=8) * 2 - 1
    visible = smooth_field(rng, (2, 1, 16, 16), scale=2) * 2 - 1
    return torch.from_numpy(infrared).float(), torch.from_numpy(visible).float()


def run_fuse(**settings) -> dict[str, np.ndarray]:
    from core.fusion.sampler import FusionSettings, fuse
    infrared, visible = fusion_sources()
    fused, trace = fuse(fusion_prior(), infrared, visible, FusionSettings(**settings))
    out: dict[str, np.ndarray] = {"timesteps": np.asarray(trace.timesteps),
                                  "forward_batches": np.asarray(trace.forward_batches)}
    pin(out, "fused", fused)
    pin(out, "weights", torch.stack([w.expand(-1, -1, *w.shape[-2:]) for w in trace.weights]))
    if trace.gains:
        out["dig_steps"] = np.asarray(trace.dig_steps)
        pin(out, "gains", torch.stack(trace.gains))
    return out


@case
def fusion_ddfm(workdir: Path) -> dict[str, np.ndarray]:
    """core.fusion.sampler.fuse, mode "ddfm" (fixed weights, uniform steps, EM "paper"): 2 tiles of 16 px,
    5 steps, seed 0; plus em_mode "code" (seed 1)."""
    out = run_fuse(mode="ddfm", steps=5, seed=0)
    out.update({f"code_{k}": v for k, v in run_fuse(mode="ddfm", steps=5, seed=1, em_mode="code").items()})
    return out


@case
def fusion_dig_scalar(workdir: Path) -> dict[str, np.ndarray]:
    """fuse, mode "dig", scalar DIG (default L2 distance): 2 tiles of 16 px, 6 nonuniform steps, weights
    recomputed every 2, seed 0; plus the gains of dig_trajectory for every DIG distance."""
    from core.fusion.sampler import DIG_DISTANCES, FusionSettings, dig_trajectory
    out = run_fuse(mode="dig", steps=6, dig_interval=2, dig_kind="scalar", seed=0)
    infrared, visible = fusion_sources()
    for distance in DIG_DISTANCES:
        trace = dig_trajectory(fusion_prior(), infrared, visible,
                               FusionSettings(mode="dig", steps=6, dig_interval=2, dig_distance=distance, seed=2))
        pin(out, f"trajectory_{distance}_gains", torch.stack(trace.gains))
    return out


@case
def fusion_dig_spatial(workdir: Path) -> dict[str, np.ndarray]:
    """fuse, mode "dig", spatial DIG over 8 px patches: 2 tiles of 16 px, 6 steps, weights every 3, seed 3."""
    return run_fuse(mode="dig", steps=6, dig_interval=3, dig_kind="spatial", dig_patch=8, seed=3)


# --- raster pipelines -----------------------------------------------------------------------------------
@case
def segment_pipeline(workdir: Path) -> dict[str, np.ndarray]:
    """segmentation.pipeline.segment_raster: 40 x 56 px RGB uint8 (nodata border), smp Unet on
    tu-mobilenetv3_small_100 (3 classes, seeded random weights), tiles of 32 px (overlap 8), batch 2;
    the class raster and the probability raster."""
    from core.checkpoint import ClassInfo, ModelCard, Normalization, save_model
    from core.segmentation.model import build_segmenter
    from core.segmentation.pipeline import TASK, SegmentParams, segment_raster
    architecture = {"arch": "Unet", "encoder": "tu-mobilenetv3_small_100", "in_channels": 3, "classes": 3,
                    "decoder": {"decoder_channels": [32, 16, 16, 8, 8]}}
    torch.manual_seed(26)
    model = build_segmenter(architecture)
    card = ModelCard(task=TASK, name="golden segmenter", architecture=architecture, bands=["red", "green", "blue"],
                     normalization=Normalization(offset=[120.0, 110.0, 100.0], scale=[60.0, 55.0, 50.0]),
                     classes=[ClassInfo(0, "a", "#000000"), ClassInfo(1, "b", "#ff0000"),
                              ClassInfo(2, "c", "#00ff00")], tile_size=32)
    model_dir = save_model(workdir / "segmenter", card, model.state_dict())
    rng = np.random.default_rng(27)
    image = (1 + 254 * smooth_field(rng, (3, 40, 56))).astype(np.uint8)
    image[:, :3] = 0
    image[:, :, -2:] = 0
    write_raster(workdir / "scene.tif", image, nodata=0)
    segment_raster(SegmentParams(str(workdir / "scene.tif"), str(workdir / "classes.tif"), model_dir=str(model_dir),
                                 device="cpu", tile_size=32, overlap=8, batch_size=2,
                                 probabilities_path=str(workdir / "probabilities.tif")))
    out: dict[str, np.ndarray] = {}
    pin(out, "classes", read_raster(workdir / "classes.tif"))
    pin(out, "probabilities", read_raster(workdir / "probabilities.tif"))
    return out


@case
def oilspill_pipeline(workdir: Path) -> dict[str, np.ndarray]:
    """oilspill.pipeline.detect_oil_spills: 48 x 64 px linear sigma0 (float32, NaN nodata columns), SAROSS-Net
    'small' (CAFT skips, 5 SAR classes, seeded random weights), tiles of 32 px (overlap 8), batch 3;
    the class raster and the oil probability raster."""
    from core.checkpoint import ModelCard, Normalization, save_model
    from core.data.sar import SAR_BANDS, SAR_CLASSES
    from core.oilspill.pipeline import OilSpillParams, detect_oil_spills
    from core.oilspill.saross import TASK, architecture_for, build_saross
    from core.data.sar_scaling import SarScaling
    architecture = architecture_for("small", len(SAR_CLASSES))
    torch.manual_seed(28)
    model = build_saross(architecture)
    card = ModelCard(task=TASK, name="golden saross", architecture=architecture, bands=list(SAR_BANDS),
                     normalization=Normalization(offset=[0.0], scale=[1.0]), classes=list(SAR_CLASSES), tile_size=32,
                     extra={"sar_scaling": SarScaling().as_dict()})
    model_dir = save_model(workdir / "saross", card, model.state_dict())
    rng = np.random.default_rng(29)
    sigma0 = (10 ** (-2.5 + 1.5 * smooth_field(rng, (48, 64), scale=8))).astype(np.float32)   # -25 .. -10 dB
    sigma0 *= rng.exponential(1.0, sigma0.shape).astype(np.float32)                           # speckle
    sigma0[:, :3] = np.nan
    write_raster(workdir / "sar.tif", sigma0, nodata=float("nan"), band_names=list(SAR_BANDS))
    result = detect_oil_spills(OilSpillParams(str(workdir / "sar.tif"), str(workdir / "classes.tif"),
                                              model_dir=str(model_dir), probability_path=str(workdir / "oil.tif"),
                                              tile_size=32, overlap=8, batch_size=3, device="cpu"))
    out: dict[str, np.ndarray] = {"oil_pixels": np.asarray(result.oil_pixels)}
    pin(out, "classes", read_raster(workdir / "classes.tif"))
    pin(out, "oil_probability", read_raster(workdir / "oil.tif"))
    return out


@case
def change_pipeline(workdir: Path) -> dict[str, np.ndarray]:
    """change.pipeline.detect_changes: two 40 x 56 px RGB uint8 dates (nodata corner in B), FC-Siam-conc
    'small' (seeded random weights), tiles of 32 px (overlap 8, padded to 16), batch 2; the change raster and
    the change probability raster."""
    from core.change.fcsiam import TASK, architecture_for, build_changedet
    from core.change.pipeline import ChangeParams, detect_changes
    from core.checkpoint import ClassInfo, ModelCard, Normalization, save_model
    from core.data.change import CHANGE_CLASSES
    architecture = architecture_for("small", 3)
    torch.manual_seed(30)
    model = build_changedet(architecture)
    card = ModelCard(task=TASK, name="golden changedet", architecture=architecture, bands=["red", "green", "blue"],
                     normalization=Normalization(offset=[0.0] * 3, scale=[255.0] * 3),
                     classes=[ClassInfo(**c) for c in CHANGE_CLASSES], tile_size=32)
    model_dir = save_model(workdir / "changedet", card, model.state_dict())
    rng = np.random.default_rng(31)
    a = (1 + 254 * smooth_field(rng, (3, 40, 56))).astype(np.uint8)
    b = a.copy()
    b[:, 12:26, 20:40] = (1 + 254 * smooth_field(rng, (3, 14, 20), scale=2)).astype(np.uint8)   # a "change"
    b[:, -4:, -6:] = 0
    write_raster(workdir / "a.tif", a, nodata=0)
    write_raster(workdir / "b.tif", b, nodata=0)
    result = detect_changes(ChangeParams(str(workdir / "a.tif"), str(workdir / "b.tif"), str(workdir / "change.tif"),
                                         model_dir=str(model_dir), probability_path=str(workdir / "p.tif"),
                                         tile_size=32, overlap=8, batch_size=2, device="cpu"))
    out: dict[str, np.ndarray] = {"changed_pixels": np.asarray(result.changed_pixels)}
    pin(out, "change", read_raster(workdir / "change.tif"))
    pin(out, "probability", read_raster(workdir / "p.tif"))
    return out


# --- command line ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.split("\n\n")[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--record", action="store_true", help="write tests/golden/<case>.npz")
    action.add_argument("--check", action="store_true", help="recompute and compare with the stored goldens")
    parser.add_argument("cases", nargs="*", help=f"cases (default: all): {', '.join(CASES)}")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    failed = []
    with tempfile.TemporaryDirectory(prefix="golden_") as tmp:
        for name in args.cases or list(CASES):
            started = time.perf_counter()
            actual = compute(name, Path(tmp) / name)
            seconds = time.perf_counter() - started
            if args.record:
                GOLDEN_DIR.mkdir(exist_ok=True)
                np.savez_compressed(golden_path(name), **actual)
                size = golden_path(name).stat().st_size
                print(f"{name}: recorded {len(actual)} arrays, {size} bytes ({seconds:.1f} s)")
                continue
            problems = differences(actual, load_golden(name)) if golden_path(name).is_file() else ["no golden file"]
            print(f"{name}: {'OK' if not problems else 'DIFFERS'} ({seconds:.1f} s)")
            for line in problems:
                print(f"    {line}")
            if problems:
                failed.append(name)
    if failed:
        print(f"{len(failed)} case(s) differ: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
