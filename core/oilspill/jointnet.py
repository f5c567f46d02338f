"""SAR-JointNet: the DAKD teacher that diffuses a SAR image and its label map jointly.

Two pixel-space diffusers UNet2DModels of one architecture: SAR-Net denoises the single-channel
image x_t, Label-Net the balanced one-hot mask y'_t = b (2 onehot - 1) + noise; both predict x0
(the image and C label logits). They interact JointNet-style through zero-initialised convs, so
a fresh coupling leaves SAR-Net exactly as stage 1 trained it. The balancing factor b matches the
two modalities' signal-to-noise ratios (b = sqrt(P(x0)) / sqrt(P(y0)), P = mean DFT power).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn

from core.data.folder import IGNORE_INDEX
from core.device import FastForward
from core.diffusion import schedules
from core.diffusion.losses import diffusion_target
from core.diffusion.sampling import reverse_diffusion, sampling_scheduler
from core.progress import Progress

TASK = "sar-jointnet"
DEFAULT_SAMPLING_STEPS = 200
PRESETS: dict[str, dict[str, Any]] = {
    # The paper gives no channel widths; this is the 256 px pixel-space DDPM UNet (Ho et al. 2020,
    # diffusers' ddpm-256 configs): six levels, attention at 16 px.
    "paper": {"sample_size": 256, "unet": {
        "block_out_channels": [128, 128, 256, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D",
                             "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]}},
    # Trainable on a CPU: the starter model.
    "small": {"sample_size": 64, "unet": {
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]}},
}


def architecture_for(preset: str, classes: int, balance: float) -> dict[str, Any]:
    """The model card's architecture: both branches share `unet`; SAR-Net has 1 channel, Label-Net `classes`."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown SAR-JointNet preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    if classes < 2:
        raise ValueError(f"SAR-JointNet needs at least 2 classes, got {classes}.")
    if not balance > 0:
        raise ValueError(f"The balancing factor must be positive, got {balance}.")
    spec = PRESETS[preset]
    return {"preset": preset, "classes": int(classes), "balance": float(balance), "sample_size": spec["sample_size"],
            "unet": {key: list(value) if isinstance(value, list) else value for key, value in spec["unet"].items()}}


def _zero_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _skip_channels(unet: UNet2DModel) -> list[int]:
    """Channels of the encoder skip tensors in the order UNet2DModel collects them: conv_in's output,
    then per level one per resnet layer plus the downsampler's (absent on the last level)."""
    widths = list(unet.config.block_out_channels)
    channels = [widths[0]]
    for level, width in enumerate(widths):
        channels += [width] * unet.config.layers_per_block + ([width] if level < len(widths) - 1 else [])
    return channels


@dataclass
class _Encoded:
    """One branch's encoder state: what its decoder (and the other branch's couplings) consume."""
    emb: torch.Tensor
    timesteps: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    mid: torch.Tensor


def _encode(unet: UNet2DModel, sample: torch.Tensor, timestep, input_addition: torch.Tensor | None) -> _Encoded:
    """UNet2DModel.forward steps 0-4 (diffusers 0.36), with `input_addition` added after conv_in."""
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    timesteps = timestep
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor([timesteps], dtype=torch.long, device=sample.device)
    elif len(timesteps.shape) == 0:
        timesteps = timesteps[None].to(sample.device)
    timesteps = timesteps * torch.ones(sample.shape[0], dtype=timesteps.dtype, device=timesteps.device)
    emb = unet.time_embedding(unet.time_proj(timesteps).to(dtype=unet.dtype))

    skip_sample = sample
    sample = unet.conv_in(sample)
    if input_addition is not None:
        sample = sample + input_addition
    skips = (sample,)
    for block in unet.down_blocks:
        if hasattr(block, "skip_conv"):
            sample, res_samples, skip_sample = block(hidden_states=sample, temb=emb, skip_sample=skip_sample)
        else:
            sample, res_samples = block(hidden_states=sample, temb=emb)
        skips += res_samples
    if unet.mid_block is not None:
        sample = unet.mid_block(sample, emb)
    return _Encoded(emb, timesteps, skips, sample)


def _decode(unet: UNet2DModel, encoded: _Encoded, skips: tuple[torch.Tensor, ...], mid: torch.Tensor) -> torch.Tensor:
    """UNet2DModel.forward steps 5-6 on the given (coupled) skips and mid-block output."""
    sample, skip_sample = mid, None
    for block in unet.up_blocks:
        res_samples, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
        if hasattr(block, "skip_conv"):
            sample, skip_sample = block(sample, res_samples, encoded.emb, skip_sample)
        else:
            sample = block(sample, res_samples, encoded.emb)
    sample = unet.conv_out(unet.conv_act(unet.conv_norm_out(sample)))
    if skip_sample is not None:
        sample += skip_sample
    if unet.config.time_embedding_type == "fourier":
        sample = sample / encoded.timesteps.reshape((sample.shape[0], *([1] * len(sample.shape[1:]))))
    return sample


class Coupling(nn.Module):
    """One direction of the SAR-Net <-> Label-Net interaction, all zero-initialised: a 3x3 conv of the
    source's noisy input (added after the target's conv_in) and 1x1 convs of the source's encoder skips
    and mid-block output (added to the target's decoder skips and mid output)."""

    def __init__(self, source_channels: int, skip_channels: list[int], mid_channels: int):
        super().__init__()
        self.input = _zero_conv(source_channels, skip_channels[0], 3)
        self.skips = nn.ModuleList(_zero_conv(c, c, 1) for c in skip_channels)
        self.mid = _zero_conv(mid_channels, mid_channels, 1)

    def into(self, target: _Encoded, source: _Encoded) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The target's decoder inputs: its own skips / mid output plus the coupled source ones."""
        skips = tuple(own + conv(other) for own, other, conv in zip(target.skips, source.skips, self.skips))
        return skips, target.mid + self.mid(source.mid)


class SarJointNet(nn.Module):
    """SAR-Net and Label-Net with their couplings; carries its architecture (classes, balance, UNet) as a
    diffusers model carries its config, so sampling needs nothing beside it."""

    def __init__(self, architecture: dict[str, Any]):
        super().__init__()
        unet, classes, sample_size = architecture["unet"], architecture["classes"], architecture.get("sample_size")
        if unet.get("class_embed_type") is not None or unet.get("num_class_embeds") is not None:
            raise ValueError("SAR-JointNet is unconditional; remove the class embedding from the UNet config.")
        self.architecture = architecture
        self.classes = classes
        self.sar_net = UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1, **unet)
        self.label_net = UNet2DModel(sample_size=sample_size, in_channels=classes, out_channels=classes, **unet)
        skips, mid = _skip_channels(self.sar_net), self.sar_net.config.block_out_channels[-1]
        self.image_to_label = Coupling(1, skips, mid)
        self.label_to_image = Coupling(classes, skips, mid)

    def couplings(self) -> list[Coupling]:
        return [self.image_to_label, self.label_to_image]

    def forward(self, x_t: torch.Tensor, y_t: torch.Tensor | None, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Noisy image (B,1,H,W) and balanced noisy mask (B,C,H,W) at the same t -> (x0_hat, label logits).

        y_t None: SAR-Net alone (stage 1), logits None. Trainers call the module itself, never a method,
        so that DistributedDataParallel sees every forward.
        """
        if y_t is None:
            return self.forward_image(x_t, t), None
        image = _encode(self.sar_net, x_t, t, self.label_to_image.input(y_t))
        label = _encode(self.label_net, y_t, t, self.image_to_label.input(x_t))
        x0_hat = _decode(self.sar_net, image, *self.label_to_image.into(image, label))
        logits = _decode(self.label_net, label, *self.image_to_label.into(label, image))
        return x0_hat, logits

    def forward_image(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """SAR-Net alone (stage 1: images without labels)."""
        return self.sar_net(x_t, t).sample


def build_jointnet(architecture: dict[str, Any]) -> SarJointNet:
    return SarJointNet(architecture)


def training_scheduler() -> DDPMScheduler:
    """The paper's squared-cosine schedule, T = 1000; the networks predict x0 ("sample")."""
    return schedules.training_scheduler("sample", "squared-cosine", clip_sample=False)


def fft_power(x: torch.Tensor) -> torch.Tensor:
    """(B,Ch,H,W) -> (B,) mean power of the 2-D DFT components (the paper's P).

    Uses the orthonormal DFT (|X_k|^2 / (H W) in numpy's unnormalised convention), so by Parseval
    P equals mean(x^2): the power of the signal, comparable to the unit power of the diffusion noise.
    """
    spectrum = torch.fft.fft2(x.to(torch.float64), norm="ortho")
    return spectrum.abs().square().mean(dim=(1, 2, 3))


def _signed_onehot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B,H,W) indices -> y0 = 2 onehot - 1 in {-1,1}^(B,C,H,W). Ignored pixels (-100) carry no class,
    but the diffused mask needs one: they count as class 0 (sea/background); the loss still ignores them."""
    indices = torch.where(labels == IGNORE_INDEX, torch.zeros_like(labels), labels).long()
    return F.one_hot(indices, classes).permute(0, 3, 1, 2).float() * 2 - 1


def balancing_factor(batches: Iterable[tuple[torch.Tensor, torch.Tensor]], classes: int) -> float:
    """b = sqrt(P(x0)) / sqrt(P(y0)), each P averaged over every sample of the set (Eq. 20).

    Batches are (images in [-1,1] (B,1,H,W), labels (B,H,W) class indices); one b per dataset.
    """
    image_power = label_power = 0.0
    samples = 0
    for images, labels in batches:
        image_power += fft_power(images).sum().item()
        label_power += fft_power(_signed_onehot(labels, classes)).sum().item()
        samples += images.shape[0]
    if samples == 0:
        raise ValueError("The balancing factor needs at least one training sample.")
    return (image_power / samples) ** 0.5 / (label_power / samples) ** 0.5


def init_label_net_from_sar(model: SarJointNet) -> None:
    """Stage 2 start: Label-Net takes SAR-Net's stage-1 weights except conv_in / conv_out, which keep
    their fresh C-channel initialisation (the paper re-makes the input and output layers)."""
    weights = {name: tensor for name, tensor in model.sar_net.state_dict().items()
               if not name.startswith(("conv_in.", "conv_out."))}
    model.label_net.load_state_dict(weights, strict=False)


def start_stage(model: SarJointNet, stage: int) -> list[nn.Parameter]:
    """Freeze what the stage keeps fixed and return the parameters it trains.

    1: SAR-Net alone; 2: Label-Net and the couplings (SAR-Net frozen); 3: everything.
    """
    coupling_parameters = [p for coupling in model.couplings() for p in coupling.parameters()]
    if stage == 1:
        trained = list(model.sar_net.parameters())
    elif stage == 2:
        trained = list(model.label_net.parameters()) + coupling_parameters
    elif stage == 3:
        trained = list(model.parameters())
    else:
        raise ValueError(f"SAR-JointNet trains in stages 1, 2 and 3, not {stage}.")
    chosen = {id(p) for p in trained}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
    return trained


def _draw(shape, generator: torch.Generator | None, device: torch.device, randint_high: int | None = None):
    """Draw on the generator's device (a CPU generator drives GPU training reproducibly), then move."""
    where = generator.device if generator is not None else device
    if randint_high is not None:
        return torch.randint(0, randint_high, shape, generator=generator, device=where).to(device)
    return torch.randn(shape, generator=generator, device=where).to(device)


def joint_loss(model: SarJointNet, scheduler: DDPMScheduler, image: torch.Tensor, labels: torch.Tensor,
               balance: float, stage: int, generator: torch.Generator | None = None, criterion=F.mse_loss
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """L = ||x0 - x0_hat||^2 (or another criterion, e.g. MCRD) (+ CE(logits, labels) from stage 2), one t per
    sample shared by both modalities.

    Draws from `generator`, in order: t, the image noise, then (stages 2/3) the independent label noise.
    `parts` holds the terms added into the loss (stage 1 adds no label term: 0.0).
    """
    device = image.device
    t = _draw((image.shape[0],), generator, device, randint_high=scheduler.config.num_train_timesteps)
    noise = _draw(image.shape, generator, device)
    x_t = scheduler.add_noise(image, noise, t)
    target = diffusion_target(scheduler, image, noise, t)     # x0: the networks predict "sample"
    if stage == 1:
        image_loss = criterion(model(x_t, None, t)[0], target)
        return image_loss, {"image": image_loss.item(), "label": 0.0}
    classes = getattr(model, "module", model).classes   # the model itself under DistributedDataParallel
    y0 = balance * _signed_onehot(labels, classes).to(device)
    y_t = scheduler.add_noise(y0, _draw(y0.shape, generator, device), t)
    x0_hat, logits = model(x_t, y_t, t)
    image_loss = criterion(x0_hat, target)
    label_loss = F.cross_entropy(logits, labels.long(), ignore_index=IGNORE_INDEX)
    return image_loss + label_loss, {"image": image_loss.item(), "label": label_loss.item()}


@dataclass
class SarPairs:
    images: torch.Tensor         # (B, 1, H, W) in [-1, 1]
    labels: torch.Tensor         # (B, H, W) int64 argmax of the logits
    probabilities: torch.Tensor  # (B, C, H, W) softmax of the final logits (the soft labels for KD)
    logits: torch.Tensor         # (B, C, H, W)


def joint_prediction(model: SarJointNet, joint: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Both branches' x0 predictions as one (B, 1 + K, H, W) tensor, from the stacked image and label."""
    return torch.cat(model(joint[:, :1], joint[:, 1:], t), dim=1)


@torch.inference_mode()
def sample_pairs(model: SarJointNet, count: int, steps: int = DEFAULT_SAMPLING_STEPS, seed: int = 0,
                 size: int | None = None, progress: Progress | None = None) -> SarPairs:
    """Generate `count` image/soft-label pairs with deterministic DDIM (eta 0), both modalities at one t.

    At every step the label x0 estimate is (softmax(logits) * 2 - 1) * b (Eq. 21): a valid balanced
    mask, whatever scale the logits have; the image estimate is x0_hat clamped to [-1, 1].
    """
    balance, classes = model.architecture["balance"], model.architecture["classes"]
    size = size or model.architecture["sample_size"]
    device = next(model.parameters()).device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(count, 1, size, size, generator=generator).to(device)
    y = torch.randn(count, classes, size, size, generator=generator).to(device)
    last_logits = []

    def label_feedback(x0: torch.Tensor, t, i: int) -> torch.Tensor:
        last_logits[:] = [x0[:, 1:]]
        return torch.cat([x0[:, :1].clamp(-1, 1), (x0[:, 1:].softmax(dim=1) * 2 - 1) * balance], dim=1)

    model.eval()
    scheduler = sampling_scheduler("ddim", steps, "sample", "squared-cosine", clip=False)
    predict = FastForward(model, joint_prediction, len(scheduler.timesteps), progress)
    joint = reverse_diffusion(predict, torch.cat([x, y], dim=1), scheduler, x0_hook=label_feedback, progress=progress)
    x, logits = joint[:, :1], last_logits[0].float().cpu()
    return SarPairs(images=x.clamp(-1, 1).float().cpu(), labels=logits.argmax(dim=1),
                    probabilities=logits.softmax(dim=1), logits=logits)
