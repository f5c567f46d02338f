"""IDGBR model core: latent diffusion that refines a coarse class map under image + coarse-map guidance.

Latents: z0 = VAE(embed(y)), c_I = VAE(image), c_r = VAE(embed(y_coarse)), the 3-channel label
embedding fed to the VAE like an RGB image. A diffusers UNet2DConditionModel (Stable Diffusion 1.5
from a local folder, or our small one) predicts epsilon for z_t. A frozen pseudo-siamese copy of
its encoder (conv_in, time embedding, down blocks, mid block; fixed timestep, fixed "empty text")
turns c_I and c_r into 13 maps each; 13 guidance modules fuse them with the denoiser's own encoder
features f_zt and the results are added to the 12 skip tensors and the mid output, where diffusers
adds `down_block_additional_residuals` / `mid_block_additional_residual`.

The UNet forward is split into an encoder half and a decoder half because the guidance needs f_zt
before the residuals can be added: diffusers' forward would run the encoder a second time (as the
official code does). The tests pin the split forward to diffusers' own residual forward.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn

from core.checkpoint import ModelCard, ModelError, load_card, load_into
from core.device import FastForward
from core.diffusion.losses import diffusion_target
from core.diffusion.sampling import reverse_diffusion
from core.diffusion.schedules import TIMESTEPS, schedule_config
from core.latents import decode_latents, encode_latents, vae_factor
from core.progress import Progress
from core.refinement.embedding import LabelEmbedding

TASK = "idgbr"
CONDITION_TIMESTEP = 1   # [code]: the siamese encoder sees its clean latents at t = 1
DROP_PROB = 0.2          # condition dropout, so that the unconditional branch of CFG is trained
GUIDANCE_SCALE = 3.0
SAMPLING_STEPS = 25
STRENGTH = 1.0           # the paper: every DDIM step, from pure noise
REPA_WEIGHT = 0.5
CLIP_TOKENS = 77
ENCODER_PARTS = ("time_proj", "time_embedding", "conv_in", "down_blocks", "mid_block")

PRESETS: dict[str, dict[str, Any]] = {
    # UNet and VAE configs are read from a local Stable Diffusion 1.5 diffusers folder (unet/, vae/,
    # optionally text_encoder/ + tokenizer/ for the empty-prompt states).
    "sd15": {"guidance_head_dim": 64, "repa_hidden": 2048},
    # SD's topology (4 levels x 2 layers: 12 skips + mid) at a CPU-trainable width: 64 px tiles -> 16 px latents.
    # The VAE is trained by us; set its scaling_factor to 1 / std of its latents after training.
    "small": {"guidance_head_dim": 32, "repa_hidden": 256, "text_tokens": 1,
              "unet": {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": [32, 32, 64, 64],
                       "layers_per_block": 2, "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                       "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, "cross_attention_dim": 64,
                       "attention_head_dim": 4, "norm_num_groups": 8},
              "vae": {"in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 3,
                      "up_block_types": ["UpDecoderBlock2D"] * 3, "block_out_channels": [32, 64, 64],
                      "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 16, "sample_size": 64,
                      "scaling_factor": 1.0}},
}


# --- architecture and construction ------------------------------------------------------------------
def architecture_for(preset: str, n_classes: int, sd_path: str | Path | None = None,
                     repa_dim: int | None = None) -> dict[str, Any]:
    """The JSON-able architecture stored in the model card; `repa_dim` = DINOv2 feature size adds a projector."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown IDGBR preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    settings = copy.deepcopy(PRESETS[preset])
    if preset == "sd15":
        folder = backbone_folder(sd_path)
        unet, vae = _folder_config(UNet2DConditionModel, folder, "unet"), _folder_config(AutoencoderKL, folder, "vae")
        tokens = CLIP_TOKENS
    else:
        unet, vae, tokens = settings["unet"], settings["vae"], settings["text_tokens"]
    _check_unet(unet)
    return {"preset": preset, "classes": n_classes, "unet": unet, "vae": vae, "text_tokens": tokens,
            "guidance_head_dim": settings["guidance_head_dim"], "repa_dim": repa_dim,
            "repa_hidden": settings["repa_hidden"]}


def backbone_folder(path: str | Path | None) -> Path:
    """A local SD1.5 diffusers folder; anything else (e.g. a hub id) is refused, weights are never downloaded."""
    if path is None:
        raise ModelError("The 'sd15' preset needs the path of a local Stable Diffusion 1.5 diffusers folder.")
    folder = Path(path)
    missing = [f"{sub}/config.json" for sub in ("unet", "vae") if not (folder / sub / "config.json").is_file()]
    if missing:
        raise ModelError(f"'{path}' is not a local Stable Diffusion 1.5 diffusers folder ({', '.join(missing)} "
                         "not found); weights are never downloaded.")
    return folder


def _folder_config(cls, folder: Path, subfolder: str) -> dict[str, Any]:
    config = cls.load_config(folder, subfolder=subfolder, local_files_only=True)
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _check_unet(config: dict[str, Any]) -> None:
    """The split forward covers SD-style UNets only: refuse other features rather than diverge from diffusers."""
    extras = ("class_embed_type", "num_class_embeds", "addition_embed_type", "encoder_hid_dim", "encoder_hid_dim_type",
              "time_embedding_act_fn", "time_cond_proj_dim")
    unsupported = [k for k in extras if config.get(k) is not None]
    if config.get("center_input_sample"):
        unsupported.append("center_input_sample")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") is None:
        unsupported.append("mid_block_type")
    if not isinstance(config.get("cross_attention_dim", 1280), int):
        unsupported.append("cross_attention_dim")
    if unsupported:
        raise ModelError(f"IDGBR needs a Stable-Diffusion-style UNet; unsupported options: {', '.join(unsupported)}.")


def feature_channels(unet_config: dict[str, Any]) -> list[int]:
    """Channels of the UNet's skip tensors (conv_in, each resnet, each downsampler) followed by the mid output."""
    channels = list(unet_config["block_out_channels"])
    layers = unet_config.get("layers_per_block", 2)
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    out = [channels[0]]
    for i, (c, n) in enumerate(zip(channels, layers)):
        out += [c] * n + ([c] if i < len(channels) - 1 else [])  # every block but the last downsamples
    return out + [channels[-1]]


def build_model(architecture: dict[str, Any], sd_path: str | Path | None = None,
                progress: Progress | None = None) -> IDGBR:
    """Random init from the architecture (then `load_into` a model dir), or SD1.5 weights from `sd_path`."""
    if sd_path is None:
        unet = UNet2DConditionModel.from_config(architecture["unet"])
        vae = AutoencoderKL.from_config(architecture["vae"])
        return IDGBR(architecture, unet, vae)
    if architecture["preset"] != "sd15":
        raise ValueError(f"Only the 'sd15' preset loads pretrained weights, not '{architecture['preset']}'.")
    folder = backbone_folder(sd_path)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    return IDGBR(architecture, unet, vae, empty_prompt_states(folder, progress or Progress()))


def load_refiner(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[IDGBR, ModelCard]:
    """A trained IDGBR model directory (task "idgbr"): everything, VAE and siamese copy included, is in its weights."""
    card = load_card(model_dir, task=TASK)
    model = load_into(build_model(card.architecture), model_dir)
    return model.to(device).eval(), card


def scale_image(raw: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """(B, bands, H, W) raw values -> [-1, 1] with the training data's per-band range (card: mean = min, std = span)."""
    low = torch.tensor(card.normalization.offset, dtype=torch.float32, device=raw.device)[:, None, None]
    span = torch.tensor(card.normalization.scale, dtype=torch.float32, device=raw.device)[:, None, None]
    return ((raw.float() - low) / span * 2 - 1).clamp(-1, 1)


def empty_prompt_states(folder: Path, progress: Progress) -> torch.Tensor | None:
    """CLIP states of the prompt "" (1, 77, 768) from the folder's text encoder; None (-> zeros) if unavailable."""
    if not ((folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir()):
        progress.warning(f"No text_encoder/ and tokenizer/ in {folder}: the UNets get zeros as empty-text states.")
        return None
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError:
        progress.warning("transformers is not installed: the UNets get zeros as empty-text states.")
        return None
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state


# --- the split UNet forward ---------------------------------------------------------------------------
def unet_encoder_features(parts: nn.Module, sample: torch.Tensor, timestep: torch.Tensor | int,
                          hidden: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """diffusers' forward up to the mid block: (12 skip tensors + mid output, time embedding).

    `parts` is a UNet2DConditionModel or a SiameseEncoder (same attribute names).
    """
    t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
    emb = parts.time_embedding(parts.time_proj(t).to(sample.dtype))
    x = parts.conv_in(sample)
    features = [x]
    for block in parts.down_blocks:
        if getattr(block, "has_cross_attention", False):
            x, skips = block(hidden_states=x, temb=emb, encoder_hidden_states=hidden)
        else:
            x, skips = block(hidden_states=x, temb=emb)
        features.extend(skips)
    if getattr(parts.mid_block, "has_cross_attention", False):
        features.append(parts.mid_block(x, emb, encoder_hidden_states=hidden))
    else:
        features.append(parts.mid_block(x, emb))
    return features, emb


def unet_decoder(unet: UNet2DConditionModel, features: list[torch.Tensor], emb: torch.Tensor,
                 hidden: torch.Tensor) -> torch.Tensor:
    """diffusers' forward from the mid output on: up blocks over the (guided) skips, then the output head."""
    x, skips = features[-1], tuple(features[:-1])
    forward_size = any(d % 2 ** unet.num_upsamplers for d in skips[0].shape[-2:])
    for i, block in enumerate(unet.up_blocks):
        n = len(block.resnets)
        res, skips = skips[-n:], skips[:-n]
        size = skips[-1].shape[2:] if forward_size and i < len(unet.up_blocks) - 1 else None
        kwargs = {"encoder_hidden_states": hidden} if getattr(block, "has_cross_attention", False) else {}
        x = block(hidden_states=x, temb=emb, res_hidden_states_tuple=res, upsample_size=size, **kwargs)
    if unet.conv_norm_out is not None:
        x = unet.conv_act(unet.conv_norm_out(x))
    return unet.conv_out(x)


class SiameseEncoder(nn.Module):
    """Frozen copy of a UNet's encoder (pseudo-siamese branch): c -> 13 maps at a fixed timestep and text."""

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        for name in ENCODER_PARTS:
            setattr(self, name, copy.deepcopy(getattr(unet, name)))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SiameseEncoder:
        """Always in eval mode: it is frozen, whatever the parent model does."""
        return super().train(False)

    def forward(self, latents: torch.Tensor, hidden: torch.Tensor) -> list[torch.Tensor]:
        return unet_encoder_features(self, latents, CONDITION_TIMESTEP, hidden)[0]


# --- guidance ------------------------------------------------------------------------------------------
@dataclass
class ConditionFeatures:
    """Siamese features of c_I and c_r; they depend on neither z_t nor t, so sampling computes them once."""
    image: list[torch.Tensor]
    coarse: list[torch.Tensor]


class GuidanceModule(nn.Module):
    """f' = ZeroConv1x1([f_zt, f_cI, f_cr]); f_g = f' + CrossAttn(Q = f', K = V = [f_cI, f_cr]) (paper eq. 8-10).

    Zero-initialised: the 1x1 conv (the paper's ZConv) and the attention's output projection, so f_g = 0 at
    init. q/k/v keep their random init: with Q = q(0) every query attends the same mix of V, which is not
    zero, so the output projection gets gradient at once and q/k/v from the second step on. (The official
    code zeroes every parameter: Q = K = V = 0 and the attention never learns.) Pre-norm on queries and
    keys/values as in [code]: the frozen features have large, level-dependent magnitudes.
    """

    def __init__(self, channels: int, head_dim: int):
        super().__init__()
        self.heads = max(1, channels // head_dim)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} attention heads.")
        self.fuse = nn.Conv2d(3 * channels, channels, 1)
        self.norm_q, self.norm_kv = nn.LayerNorm(channels), nn.LayerNorm(2 * channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k, self.to_v = nn.Linear(2 * channels, channels), nn.Linear(2 * channels, channels)
        self.to_out = nn.Linear(channels, channels)
        for layer in (self.fuse, self.to_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, f_zt: torch.Tensor, f_image: torch.Tensor, f_coarse: torch.Tensor) -> torch.Tensor:
        f_c = torch.cat([f_image, f_coarse], dim=1)
        fused = self.fuse(torch.cat([f_zt, f_c], dim=1))
        b, c, h, w = fused.shape
        q = self.to_q(self.norm_q(fused.flatten(2).transpose(1, 2)))
        kv = self.norm_kv(f_c.flatten(2).transpose(1, 2))
        q, k, v = (x.unflatten(-1, (self.heads, -1)).transpose(1, 2) for x in (q, self.to_k(kv), self.to_v(kv)))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return fused + self.to_out(attended).transpose(1, 2).reshape(b, c, h, w)


class GuidanceNetwork(nn.Module):
    """One guidance module per UNet level (12 skips + mid)."""

    def __init__(self, channels: list[int], head_dim: int):
        super().__init__()
        self.levels = nn.ModuleList(GuidanceModule(c, head_dim) for c in channels)

    def forward(self, features: list[torch.Tensor], conditions: ConditionFeatures,
                keep: torch.Tensor | None = None) -> list[torch.Tensor] | None:
        """Residuals per level, zero for rows whose `keep` is False (computed only for kept rows);
        None when no row keeps its condition."""
        if len(features) != len(self.levels):
            raise ValueError(f"Expected {len(self.levels)} UNet feature maps, got {len(features)}.")
        rows = None
        if keep is not None and not bool(keep.all()):
            if not bool(keep.any()):
                return None
            rows = keep.nonzero().squeeze(1)
        residuals = []
        for module, f, f_image, f_coarse in zip(self.levels, features, conditions.image, conditions.coarse):
            if rows is None:
                residuals.append(module(f, f_image, f_coarse))
            else:
                guided = module(f[rows], f_image[rows], f_coarse[rows])
                residuals.append(torch.zeros_like(f).index_copy(0, rows, guided))
        return residuals


# --- the model -----------------------------------------------------------------------------------------
class IDGBR(nn.Module):
    """Label embedding + VAE + denoising UNet + frozen siamese encoder + guidance (+ optional REPA projector).

    The VAE and the siamese encoder are frozen; the label embedding is trained beforehand (embedding_loss)
    and only used under no_grad here; `diffusion_parameters()` is what the diffusion stage trains.
    """

    def __init__(self, architecture: dict[str, Any], unet: UNet2DConditionModel, vae: AutoencoderKL,
                 empty_text: torch.Tensor | None = None):
        super().__init__()
        _check_unet(dict(unet.config))
        self.architecture = architecture
        self.label_embedding = LabelEmbedding(architecture["classes"])
        self.vae = vae.requires_grad_(False)
        self.unet = unet
        self.siamese = SiameseEncoder(unet)
        channels = feature_channels(dict(unet.config))
        self.guidance = GuidanceNetwork(channels, architecture["guidance_head_dim"])
        shape = (1, architecture["text_tokens"], unet.config.cross_attention_dim)
        if empty_text is None:
            empty_text = torch.zeros(shape)
        if tuple(empty_text.shape) != shape:
            raise ModelError(f"Empty-text states have shape {tuple(empty_text.shape)}; the UNet needs {shape}.")
        self.register_buffer("empty_text", empty_text.detach().clone().float())
        repa_dim = architecture.get("repa_dim")
        self.projector = build_projector(channels[-1], architecture["repa_hidden"], repa_dim) if repa_dim else None

    @property
    def latent_factor(self) -> int:
        return vae_factor(self.vae)

    def diffusion_parameters(self) -> list[nn.Parameter]:
        """What the diffusion stage trains: the denoiser, the guidance modules and the REPA projector (and the
        siamese copy, if a trainer unfroze it)."""
        modules = [self.unet, self.guidance, self.siamese] + ([self.projector] if self.projector is not None else [])
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (the VAE's mode: deterministic conditions and targets)."""
        return encode_latents(self.vae, image)

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, H, W) class indices -> latents of their embedding (E_S in the paper)."""
        return self.encode_image(self.label_embedding.encode(labels))

    def decode_logits(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> VAE decode -> label decoder -> (B, K, H, W) logits (D_S in the paper)."""
        return self.label_embedding.decode(decode_latents(self.vae, latents))

    def text_states(self, batch: int) -> torch.Tensor:
        """The fixed empty-text states: the UNets' cross-attention always sees the same (no) prompt."""
        return self.empty_text.expand(batch, -1, -1)

    def condition_features(self, c_image: torch.Tensor, c_coarse: torch.Tensor) -> ConditionFeatures:
        """Siamese features of c_I and c_r in one batched pass (with gradient only where the copy was unfrozen)."""
        both = torch.cat([c_image, c_coarse])
        features = self.siamese(both, self.text_states(both.shape[0]))
        n = c_image.shape[0]
        return ConditionFeatures([f[:n] for f in features], [f[n:] for f in features])

    def predict(self, z_t: torch.Tensor, t: torch.Tensor | int, conditions: ConditionFeatures,
                keep: torch.Tensor | None = None, return_hidden: bool = False):
        """eps for z_t; rows with keep False get no guidance (the unconditional branch).

        With `return_hidden`, also the UNet encoder's last hidden state of z_t (mid output, for REPA).
        """
        hidden = self.text_states(z_t.shape[0])
        features, emb = unet_encoder_features(self.unet, z_t, t, hidden)
        residuals = self.guidance(features, conditions, keep)
        guided = features if residuals is None else [f + r for f, r in zip(features, residuals)]
        eps = unet_decoder(self.unet, guided, emb, hidden)
        return (eps, features[-1]) if return_hidden else eps

    def predict_cfg(self, z_t: torch.Tensor, t: torch.Tensor | int,
                    conditions: ConditionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_uncond, eps_cond) in one forward. The guidance is added to the encoder's outputs, so the UNet
        encoder never sees the conditions: both branches share one encoder pass, and the decoder runs once over
        the stacked [plain | guided] features (2B rows). Equal to two predict() calls, at ~1.5 forwards' cost."""
        batch = z_t.shape[0]
        features, emb = unet_encoder_features(self.unet, z_t, t, self.text_states(batch))
        residuals = self.guidance(features, conditions)
        stacked = [torch.cat([f, f + r]) for f, r in zip(features, residuals)]
        return unet_decoder(self.unet, stacked, torch.cat([emb, emb]), self.text_states(2 * batch)).chunk(2)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int, c_image: torch.Tensor, c_coarse: torch.Tensor,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(z_t, t, self.condition_features(c_image, c_coarse), keep)


# --- diffusion: schedule, training loss, sampling ----------------------------------------------------
def noise_scheduler() -> DDIMScheduler:
    """SD's schedule: scaled_linear betas 8.5e-4 .. 1.2e-2, T = 1000, epsilon; add_noise to train, DDIM to sample."""
    return DDIMScheduler(**schedule_config("scaled-linear"), prediction_type="epsilon", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def cubic_timesteps(count: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                    timesteps: int = TIMESTEPS) -> torch.Tensor:
    """t = (1 - (u/T)^3) T, u ~ U(0, T) (paper eq. 13): ~79% of t > T/2, more training where noise is high."""
    u = torch.rand(count, generator=generator, device=device) * timesteps
    return ((1 - (u / timesteps) ** 3) * timesteps).long().clamp(0, timesteps - 1)


def training_loss(model: IDGBR, scheduler: DDIMScheduler, image: torch.Tensor, labels: torch.Tensor,
                  coarse: torch.Tensor, generator: torch.Generator | None = None, drop_prob: float = DROP_PROB,
                  dinov2_tokens: torch.Tensor | None = None,
                  repa_weight: float = REPA_WEIGHT, criterion=F.mse_loss,
                  strength: float = STRENGTH) -> dict[str, torch.Tensor]:
    """Eps-MSE (or another criterion, e.g. MCRD) at a cubic-sampled t with condition dropout, + repa_weight *
    L_REPA when DINOv2 tokens are given. `strength` < 1 draws t (still cubic) from the share of the chain
    that refine(strength=...) runs, [0, strength T): a refiner sampled from the noised coarse map is trained
    only where it is used.

    image (B, 3, H, W) in [-1, 1]; labels, coarse (B, H, W). Returns {"loss", "mse"[, "repa"]}.
    """
    with torch.no_grad():
        z0, c_image, c_coarse = model.encode_labels(labels), model.encode_image(image), model.encode_labels(coarse)
    conditions = model.condition_features(c_image, c_coarse)
    batch, device = z0.shape[0], z0.device
    t = cubic_timesteps(batch, generator, device, timesteps=max(1, round(strength * TIMESTEPS)))
    noise = torch.randn(z0.shape, generator=generator, device=device)
    keep = torch.rand(batch, generator=generator, device=device) >= drop_prob
    eps, hidden = model.predict(scheduler.add_noise(z0, noise, t), t, conditions, keep, return_hidden=True)
    losses = {"mse": criterion(eps, diffusion_target(scheduler, z0, noise, t))}
    losses["loss"] = losses["mse"]
    if dinov2_tokens is not None:
        if model.projector is None:
            raise ValueError("DINOv2 tokens were given but the architecture has no REPA projector (repa_dim).")
        losses["repa"] = repa_loss(model.projector, hidden, dinov2_tokens)
        losses["loss"] = losses["mse"] + repa_weight * losses["repa"]
    return losses


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps = eps_u + w (eps_c - eps_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_eps(model: IDGBR, z_t: torch.Tensor, t: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
    """(eps_uncond | eps_cond) stacked on the channel axis, from the condition features as plain tensors (image
    maps, then coarse-map maps): what core.device.FastForward runs."""
    return torch.cat(model.predict_cfg(z_t, t, _conditions(features)), dim=1)


def conditional_eps(model: IDGBR, z_t: torch.Tensor, t: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
    return model.predict(z_t, t, _conditions(features))


def _conditions(features: tuple[torch.Tensor, ...]) -> ConditionFeatures:
    half = len(features) // 2
    return ConditionFeatures(list(features[:half]), list(features[half:]))


@torch.inference_mode()
def refine(model: IDGBR, image: torch.Tensor, coarse: torch.Tensor, steps: int = SAMPLING_STEPS,
           guidance_scale: float = GUIDANCE_SCALE, seed: int = 0, progress: Progress | None = None,
           strength: float = STRENGTH, calls: int = 0) -> torch.Tensor:
    """Refined class probabilities (B, K, H, W) from images (B, 3, H, W) in [-1, 1] and coarse maps (B, H, W).

    DDIM from z_T ~ N(0, I) (strength 1, the paper); with CFG the unconditional and conditional passes run as
    one forward (IDGBR.predict_cfg). Strength s < 1 runs only the last s of the DDIM steps, from the coarse map's
    latent noised to that level (SDEdit): the refiner redraws what the noise hides (boundaries) and keeps the
    layout, which a small refiner cannot redraw as well as the coarse map has it. Probabilities, not labels,
    so that tiles can be blended. `calls`: how many denoiser calls the caller makes in all with this model (a
    pipeline refines tile batch after tile batch; 0: this chain's), for core.device.FastForward.
    """
    if not 0 < strength <= 1:
        raise ValueError(f"Strength must be in (0, 1], got {strength}.")
    factor = model.latent_factor
    if image.shape[-1] % factor or image.shape[-2] % factor:
        raise ValueError(f"Tile size {tuple(image.shape[-2:])} must be a multiple of {factor} (the VAE's factor).")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        scheduler = noise_scheduler()
        scheduler.set_timesteps(steps)
        c_image, c_coarse = model.encode_image(image.to(device)), model.encode_labels(coarse.to(device))
        conditions = model.condition_features(c_image, c_coarse)
        generator = torch.Generator().manual_seed(seed)
        z = torch.randn(c_image.shape, generator=generator).to(device)
        if strength < 1:
            scheduler.timesteps = scheduler.timesteps[-max(1, round(strength * steps)):]
            z = scheduler.add_noise(c_coarse, z, scheduler.timesteps[:1])

        net = FastForward(model, guided_eps if guidance_scale != 1 else conditional_eps,
                          calls or len(scheduler.timesteps), progress)
        features = (*conditions.image, *conditions.coarse)

        def predict(z_t: torch.Tensor, t) -> torch.Tensor:
            eps = net(z_t, t, *features)
            return cfg_combine(*eps.chunk(2, dim=1), guidance_scale) if guidance_scale != 1 else eps

        z = reverse_diffusion(predict, z, scheduler, progress=progress)
        return model.decode_logits(z).softmax(dim=1)
    finally:
        model.train(was_training)


# --- REPA (optional; DINOv2 tokens come from the caller) ------------------------------------------------
def build_projector(in_channels: int, hidden: int, out_dim: int) -> nn.Sequential:
    """REPA's 3-layer MLP from UNet features to the DINOv2 feature size."""
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                         nn.Linear(hidden, out_dim))


def repa_loss(projector: nn.Module, hidden: torch.Tensor, dinov2_tokens: torch.Tensor) -> torch.Tensor:
    """-mean patch-wise cosine between projected UNet features (B, C, h, w) and DINOv2 patch tokens (B, N, D).

    The tokens (class token removed) must form a square grid; the projected map is resized bilinearly to it,
    because the UNet's mid grid is coarser than DINOv2's.
    """
    b, n, d = dinov2_tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} DINOv2 patch tokens do not form a square grid (drop the class token).")
    projected = projector(hidden.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, d, *hidden.shape[-2:])
    projected = F.interpolate(projected, size=(side, side), mode="bilinear", align_corners=False)
    return -F.cosine_similarity(projected.flatten(2).transpose(1, 2), dinov2_tokens, dim=-1).mean()
