"""Convert an OpenAI guided-diffusion `UNetModel` checkpoint into a diffusers `UNet2DModel` folder.

The DDFM / Dig2DIG prior is guided-diffusion's `256x256_diffusion_uncond.pt`. diffusers'
`UNet2DModel` expresses the same network exactly:

- guided-diffusion's timestep embedding is [cos, sin] with frequencies exp(-ln(1e4) k / half):
  `flip_sin_to_cos=True`, `freq_shift=0`, projected to `block_out_channels[0]` channels;
- `ResBlock` (in_layers / emb_layers / out_layers / skip_connection) -> `ResnetBlock2D`
  (norm1 / conv1 / time_emb_proj / norm2 / conv2 / conv_shortcut); FiLM (scale-shift) norm ->
  `resnet_time_scale_shift="scale_shift"`, additive -> `"default"`;
- `resblock_updown` (a ResBlock with avg-pool / nearest up-sampling inside) -> ResnetDownsampleBlock2D /
  ResnetUpsampleBlock2D and `downsample_type="resnet"` / `upsample_type="resnet"`; otherwise a strided
  3x3 conv (`Downsample`) / nearest + 3x3 conv (`Upsample`) -> DownBlock2D / UpBlock2D and `"conv"`;
- `AttentionBlock` (norm, 1x1 `qkv` conv, `proj_out`) -> `Attention` (group_norm, to_q/to_k/to_v
  linears, to_out.0). The fused qkv rows are ordered per head ([q_h, k_h, v_h] for every head h,
  `QKVAttentionLegacy`, the default and the order of all released checkpoints) or q/k/v first
  (`QKVAttention`, `use_new_attention_order=True`). The order is not visible in the weights: it is
  a config setting. Both use the 1/sqrt(head_dim) scale of diffusers.
- With scale-shift norm diffusers' mid-block attention has no GroupNorm unless `attn_norm_num_groups`
  is set, so the config sets it to 32 explicitly.

Head settings (`num_head_channels` / `num_heads`) are not visible in the weights either: the defaults
are the 256x256 flags; override them for other checkpoints.

`convert_checkpoint` writes a diffusers folder (config.json + diffusion_pytorch_model.safetensors) plus
our card `model.json` (task "fusion-prior"); its command line is `python -m training convert-guided-diffusion`.
"""
from __future__ import annotations

import json
import pickle
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

TASK = "fusion-prior"
SOURCE = "guided-diffusion"
GROUPS = 32
NORM_EPS = 1e-5  # torch.nn.GroupNorm default, used by guided-diffusion's GroupNorm32

_RESNET_PARTS = {  # guided-diffusion ResBlock sub-key -> diffusers ResnetBlock2D sub-key
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted, explained for the user."""


@dataclass
class GuidedDiffusionConfig:
    """The `create_model` flags of guided-diffusion; defaults = `256x256_diffusion_uncond.pt`."""
    image_size: int = 256
    in_channels: int = 3
    num_channels: int = 256
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    attention_resolutions: tuple[int, ...] = (32, 16, 8)  # in pixels, like the --attention_resolutions flag
    num_head_channels: int = 64
    num_heads: int = 4  # used only when num_head_channels == -1
    learn_sigma: bool = True
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    use_new_attention_order: bool = False

    # inferable from a state dict; the rest (image_size, heads, attention order) is not
    INFERRED = ("in_channels", "num_channels", "num_res_blocks", "channel_mult", "attention_resolutions",
                "learn_sigma", "use_scale_shift_norm", "resblock_updown")

    def __post_init__(self) -> None:
        self.channel_mult = tuple(int(m) for m in self.channel_mult)
        self.attention_resolutions = tuple(int(r) for r in self.attention_resolutions)

    @property
    def out_channels(self) -> int:
        return self.in_channels * (2 if self.learn_sigma else 1)

    @property
    def attention_levels(self) -> set[int]:
        """Levels with attention: guided-diffusion attends where 2**level == image_size // resolution."""
        ds = {self.image_size // r for r in self.attention_resolutions if r > 0}
        return {level for level in range(len(self.channel_mult)) if 2 ** level in ds}

    @classmethod
    def infer(cls, state_dict: dict[str, torch.Tensor], **overrides: Any) -> "GuidedDiffusionConfig":
        """Read the architecture from a guided-diffusion state dict; `overrides` set what it cannot show.

        An override of an inferable field must agree with the weights (otherwise the conversion
        could only fail later with a less clear message).
        """
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConversionError(f"Unknown guided-diffusion setting(s): {', '.join(sorted(unknown))}.")
        base = replace(cls(), **{k: v for k, v in overrides.items() if k not in cls.INFERRED})
        inferred = _infer_fields(state_dict, base.image_size)
        cfg = replace(base, **inferred)
        for key, value in overrides.items():
            if key in cls.INFERRED and getattr(replace(cfg, **{key: value}), key) != getattr(cfg, key):
                raise ConversionError(f"Setting {key}={value!r} contradicts the checkpoint, which has "
                                      f"{key}={getattr(cfg, key)!r}.")
        return cfg


def _need(state_dict: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise ConversionError(f"Not a guided-diffusion UNet state dict: key '{key}' is missing.")
    return state_dict[key]


def _layers(state_dict: dict[str, torch.Tensor], block: str) -> dict[int, set[str]]:
    """{layer index: its parameter sub-keys} of one TimestepEmbedSequential, e.g. 'output_blocks.3'."""
    out: dict[int, set[str]] = {}
    pattern = re.compile(rf"^{re.escape(block)}\.(\d+)\.(.+)$")
    for key in state_dict:
        match = pattern.match(key)
        if match:
            out.setdefault(int(match.group(1)), set()).add(match.group(2))
    return out


def _count(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    indices = {int(m.group(1)) for k in state_dict if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        raise ConversionError(f"Not a guided-diffusion UNet state dict: {prefix} indices are not 0..n-1.")
    return len(indices)


def _infer_fields(state_dict: dict[str, torch.Tensor], image_size: int) -> dict[str, Any]:
    time_in = _need(state_dict, "time_embed.0.weight")
    conv_in = _need(state_dict, "input_blocks.0.0.weight")
    conv_out = _need(state_dict, "out.2.weight")
    model_channels = int(time_in.shape[1])
    in_channels = int(conv_in.shape[1])
    out_channels = int(conv_out.shape[0])
    if out_channels not in (in_channels, 2 * in_channels):
        raise ConversionError(f"Output channels {out_channels} are neither the input channels {in_channels} "
                              f"nor twice them (learned sigma).")

    n_out = _count(state_dict, "output_blocks")
    n_in = _count(state_dict, "input_blocks")
    if n_out == 0:
        raise ConversionError("Not a guided-diffusion UNet state dict: no output_blocks.")
    # The first output block holding an up-sampler closes the deepest level: its index is num_res_blocks.
    upsampler_at = None
    resblock_updown = None
    for i in range(n_out):
        layers = _layers(state_dict, f"output_blocks.{i}")
        extra = [idx for idx, keys in layers.items()
                 if idx > 0 and not any(k.startswith("qkv.") for k in keys)]
        if extra:
            upsampler_at = i
            keys = layers[max(extra)]
            resblock_updown = any(k.startswith("in_layers.") for k in keys)
            break
    num_res_blocks = (n_out - 1) if upsampler_at is None else upsampler_at
    if num_res_blocks < 1 or n_out % (num_res_blocks + 1):
        raise ConversionError(f"Cannot read the level structure: {n_out} output blocks, "
                              f"first up-sampler at block {upsampler_at}.")
    levels = n_out // (num_res_blocks + 1)
    if n_in != levels * (num_res_blocks + 1):
        raise ConversionError(f"Cannot read the level structure: {n_in} input blocks for {levels} levels of "
                              f"{num_res_blocks} res blocks (up/down-sampling without a convolution is not "
                              f"supported).")
    if resblock_updown is None:  # one level: no resampling at all
        resblock_updown = True

    channel_mult = []
    attention = []
    scale_shift = None
    for level in range(levels):
        first = f"input_blocks.{1 + level * (num_res_blocks + 1)}"
        width = int(_need(state_dict, f"{first}.0.out_layers.3.weight").shape[0])
        if width % model_channels:
            raise ConversionError(f"Level {level} has {width} channels, not a multiple of {model_channels}.")
        channel_mult.append(width // model_channels)
        attention.append(f"{first}.1.qkv.weight" in state_dict)
        emb = int(_need(state_dict, f"{first}.0.emb_layers.1.weight").shape[0])
        scale_shift = emb == 2 * width
    if channel_mult[0] != 1:
        raise ConversionError(f"channel_mult starts with {channel_mult[0]}: diffusers' UNet2DModel sizes the "
                              f"timestep embedding by the first level's width, so only channel_mult[0] == 1 "
                              f"converts exactly.")
    attended = [level for level, has in enumerate(attention) if has]
    resolutions = tuple(image_size // 2 ** level for level in attended)
    if any(image_size % 2 ** level for level in attended):
        raise ConversionError(f"image_size {image_size} is not divisible by the down-sampling factors of the "
                              f"attention levels; pass the checkpoint's image size.")
    return dict(in_channels=in_channels, num_channels=model_channels, num_res_blocks=num_res_blocks,
                channel_mult=tuple(channel_mult), attention_resolutions=resolutions,
                learn_sigma=out_channels == 2 * in_channels, use_scale_shift_norm=bool(scale_shift),
                resblock_updown=bool(resblock_updown))


def _attention_widths(cfg: GuidedDiffusionConfig) -> list[int]:
    widths = [cfg.num_channels * cfg.channel_mult[level] for level in sorted(cfg.attention_levels)]
    return widths + [cfg.num_channels * cfg.channel_mult[-1]]  # the middle block always attends


def _head_dim(cfg: GuidedDiffusionConfig) -> int | None:
    """diffusers' single `attention_head_dim` (None: one head of the block's full width)."""
    widths = _attention_widths(cfg)
    if cfg.num_head_channels != -1:
        bad = sorted({w for w in widths if w % cfg.num_head_channels})
        if cfg.num_head_channels <= 0 or bad:
            raise ConversionError(f"num_head_channels {cfg.num_head_channels} does not divide the attention "
                                  f"width(s) {bad or widths}.")
        return cfg.num_head_channels
    if cfg.num_heads == 1:
        return None
    if cfg.num_heads <= 0 or len(set(widths)) != 1 or widths[0] % cfg.num_heads:
        raise ConversionError(f"num_heads {cfg.num_heads} at attention widths {sorted(set(widths))} gives "
                              f"per-level head sizes that diffusers' UNet2DModel (one attention_head_dim) "
                              f"cannot express; use num_head_channels.")
    return widths[0] // cfg.num_heads


def unet_config(cfg: GuidedDiffusionConfig) -> dict[str, Any]:
    """The `UNet2DModel(**kwargs)` that computes exactly what guided-diffusion's UNetModel computes."""
    levels = len(cfg.channel_mult)
    attn = cfg.attention_levels
    plain_down = "ResnetDownsampleBlock2D" if cfg.resblock_updown else "DownBlock2D"
    plain_up = "ResnetUpsampleBlock2D" if cfg.resblock_updown else "UpBlock2D"
    return {
        "sample_size": cfg.image_size,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "flip_sin_to_cos": True,  # guided-diffusion: [cos, sin]
        "freq_shift": 0,  # exponent -ln(10000) k / half
        "down_block_types": ["AttnDownBlock2D" if lv in attn else plain_down for lv in range(levels)],
        "up_block_types": ["AttnUpBlock2D" if lv in attn else plain_up for lv in reversed(range(levels))],
        "block_out_channels": [cfg.num_channels * m for m in cfg.channel_mult],
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 1,
        "downsample_type": "resnet" if cfg.resblock_updown else "conv",
        "upsample_type": "resnet" if cfg.resblock_updown else "conv",
        "dropout": 0.0,
        "act_fn": "silu",
        "attention_head_dim": _head_dim(cfg),
        "norm_num_groups": GROUPS,
        "attn_norm_num_groups": GROUPS,  # else no GroupNorm in the mid-block attention with scale_shift
        "norm_eps": NORM_EPS,
        "resnet_time_scale_shift": "scale_shift" if cfg.use_scale_shift_norm else "default",
        "add_attention": True,
    }


def _modules(cfg: GuidedDiffusionConfig) -> list[tuple[str, str, str, int, int]]:
    """(guided-diffusion prefix, diffusers prefix, kind, in channels, out channels) for every module."""
    mods: list[tuple[str, str, str, int, int]] = [
        ("time_embed.0", "time_embedding.linear_1", "plain", 0, 0),
        ("time_embed.2", "time_embedding.linear_2", "plain", 0, 0),
        ("input_blocks.0.0", "conv_in", "plain", 0, 0),
    ]
    nrb, levels, attn = cfg.num_res_blocks, len(cfg.channel_mult), cfg.attention_levels
    resample = "resnet" if cfg.resblock_updown else "conv"
    ch = cfg.num_channels * cfg.channel_mult[0]
    skips = [ch]
    k = 1
    for level, mult in enumerate(cfg.channel_mult):
        width = cfg.num_channels * mult
        for j in range(nrb):
            mods.append((f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "resnet", ch, width))
            ch = width
            if level in attn:
                mods.append((f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attn", ch, ch))
            skips.append(ch)
            k += 1
        if level != levels - 1:
            src = f"input_blocks.{k}.0" + ("" if cfg.resblock_updown else ".op")
            mods.append((src, f"down_blocks.{level}.downsamplers.0" + ("" if cfg.resblock_updown else ".conv"),
                         resample, ch, ch))
            skips.append(ch)
            k += 1
    mods += [("middle_block.0", "mid_block.resnets.0", "resnet", ch, ch),
             ("middle_block.1", "mid_block.attentions.0", "attn", ch, ch),
             ("middle_block.2", "mid_block.resnets.1", "resnet", ch, ch)]
    k = 0
    for u, level in enumerate(reversed(range(levels))):
        width = cfg.num_channels * cfg.channel_mult[level]
        for i in range(nrb + 1):
            mods.append((f"output_blocks.{k}.0", f"up_blocks.{u}.resnets.{i}", "resnet", ch + skips.pop(), width))
            ch = width
            layer = 1
            if level in attn:
                mods.append((f"output_blocks.{k}.1", f"up_blocks.{u}.attentions.{i}", "attn", ch, ch))
                layer = 2
            if level and i == nrb:
                src = f"output_blocks.{k}.{layer}" + ("" if cfg.resblock_updown else ".conv")
                mods.append((src, f"up_blocks.{u}.upsamplers.0" + ("" if cfg.resblock_updown else ".conv"),
                             resample, ch, ch))
            k += 1
    mods += [("out.0", "conv_norm_out", "plain", 0, 0), ("out.2", "conv_out", "plain", 0, 0)]
    return mods


def _split_qkv(weight: torch.Tensor, bias: torch.Tensor, heads: int, legacy: bool, key: str):
    width3 = weight.shape[0]
    if weight.ndim != 3 or weight.shape[2] != 1 or width3 % 3 or width3 // 3 != weight.shape[1] \
            or bias.shape != (width3,) or (width3 // 3) % heads:
        raise ConversionError(f"Shape mismatch: '{key}.weight' {tuple(weight.shape)} / '{key}.bias' "
                              f"{tuple(bias.shape)} is not a 1x1 qkv conv of {heads} head(s).")
    width = width3 // 3
    w = weight[:, :, 0]
    if legacy:  # QKVAttentionLegacy: rows are [q_h, k_h, v_h] per head h
        w = w.reshape(heads, 3, width // heads, width)
        b = bias.reshape(heads, 3, width // heads)
        parts = [(w[:, i].reshape(width, width), b[:, i].reshape(width)) for i in range(3)]
    else:  # QKVAttention: rows are [q (all heads), k, v]
        parts = [(w[i * width:(i + 1) * width], bias[i * width:(i + 1) * width]) for i in range(3)]
    return [(pw.clone(), pb.clone()) for pw, pb in parts]  # own storage: safetensors refuses shared tensors


def convert_state_dict(state_dict: dict[str, torch.Tensor], cfg: GuidedDiffusionConfig) -> dict[str, torch.Tensor]:
    """Rename / reshape a guided-diffusion UNetModel state dict into UNet2DModel(**unet_config(cfg)) keys.

    Every source tensor must be used exactly once and every expected one must exist: a checkpoint that
    does not match `cfg` is an error naming the keys, never a partly random model.
    """
    head_dim = _head_dim(cfg)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []

    def take(key: str) -> torch.Tensor | None:
        if key not in state_dict:
            missing.append(key)
            return None
        used.add(key)
        return state_dict[key]

    def move(src: str, dst: str) -> None:
        for suffix in ("weight", "bias"):
            tensor = take(f"{src}.{suffix}")
            if tensor is not None:
                out[f"{dst}.{suffix}"] = tensor

    for src, dst, kind, c_in, c_out in _modules(cfg):
        if kind in ("plain", "conv"):
            move(src, dst)
        elif kind == "resnet":
            for part, name in _RESNET_PARTS.items():
                move(f"{src}.{part}", f"{dst}.{name}")
            if c_in != c_out:
                move(f"{src}.skip_connection", f"{dst}.conv_shortcut")
        elif kind == "attn":
            move(f"{src}.norm", f"{dst}.group_norm")
            weight, bias = take(f"{src}.qkv.weight"), take(f"{src}.qkv.bias")
            if weight is not None and bias is not None:
                heads = 1 if head_dim is None else c_out // head_dim
                for name, (w, b) in zip(("to_q", "to_k", "to_v"),
                                        _split_qkv(weight, bias, heads, not cfg.use_new_attention_order,
                                                   f"{src}.qkv")):
                    out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = w, b
            weight, bias = take(f"{src}.proj_out.weight"), take(f"{src}.proj_out.bias")
            if weight is not None and bias is not None:
                if weight.ndim != 3 or weight.shape[2] != 1:
                    raise ConversionError(f"Shape mismatch: '{src}.proj_out.weight' {tuple(weight.shape)} is not "
                                          f"a 1x1 conv1d.")
                out[f"{dst}.to_out.0.weight"], out[f"{dst}.to_out.0.bias"] = weight[:, :, 0].clone(), bias
    unused = sorted(set(state_dict) - used)
    problems = []
    if missing:
        problems.append(f"missing key(s) {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unused:
        problems.append(f"unused key(s) {', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")
    if problems:
        hint = " (class-conditional checkpoints are not supported)" if "label_emb.weight" in unused else ""
        raise ConversionError(f"Checkpoint does not match the guided-diffusion config {asdict(cfg)}: "
                              f"{'; '.join(problems)}{hint}.")
    return out


def load_guided_diffusion(checkpoint_path: str | Path) -> dict[str, torch.Tensor]:
    """Load a bare state dict or {"state_dict": ...} with weights_only=True (no code can run)."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint not found: {path}.")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"{path.name} is not a plain tensor state dict: torch.load(weights_only=True) "
                              f"refused it ({first}). Re-save it as torch.save(model.state_dict()).") from exc
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ConversionError(f"{path.name} is not a readable PyTorch checkpoint: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not data:
        raise ConversionError(f"{path.name} is not a state dict (found {type(data).__name__}).")
    bad = [str(k) for k, v in data.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path.name} is not a state dict: entries {', '.join(bad[:5])} are not tensors.")
    return data


def _bands(in_channels: int) -> list[str]:
    if in_channels == 3:
        return ["red", "green", "blue"]
    if in_channels == 1:
        return ["gray"]
    return [f"band{i + 1}" for i in range(in_channels)]


def convert_checkpoint(checkpoint_path: str | Path, output_dir: str | Path, cfg_overrides: dict | None = None,
                       name: str = "") -> Path:
    """Checkpoint -> diffusers folder (config.json, diffusion_pytorch_model.safetensors) + model.json card."""
    from diffusers import UNet2DModel

    from core.checkpoint import ModelCard, Normalization
    from core.raster import staged_dir

    path = Path(checkpoint_path)
    state_dict = load_guided_diffusion(path)
    cfg = GuidedDiffusionConfig.infer(state_dict, **(cfg_overrides or {}))
    config = unet_config(cfg)
    converted = convert_state_dict(state_dict, cfg)
    del state_dict
    with torch.device("meta"):  # no 550M-parameter random init: every tensor comes from the checkpoint
        model = UNet2DModel(**config)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(converted[k].shape)} (needs {tuple(v.shape)})" for k, v in expected.items()
             if k in converted and converted[k].shape != v.shape]
    if wrong:
        raise ConversionError(f"Shape mismatch for {len(wrong)} tensor(s): {'; '.join(wrong[:5])}.")
    for key, tensor in converted.items():
        if not tensor.is_floating_point():
            raise ConversionError(f"Tensor '{key}' has dtype {tensor.dtype}, not floating point.")
        converted[key] = tensor.to(torch.float32).contiguous()
    try:
        model.load_state_dict(converted, strict=True, assign=True)
    except RuntimeError as exc:
        raise ConversionError(f"Converted weights do not fit UNet2DModel: {str(exc).splitlines()[0]}") from exc
    left = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if left:
        raise ConversionError(f"No weights for {', '.join(left[:5])}.")
    model.eval()

    card = ModelCard(
        task=TASK,
        name=name or path.stem,
        architecture={"unet": config, "learned_sigma": cfg.learn_sigma, "source": SOURCE},
        bands=_bands(cfg.in_channels),
        normalization=Normalization(offset=[0.5] * cfg.in_channels, scale=[0.5] * cfg.in_channels),
        tile_size=cfg.image_size,
        training_data=f"converted from {path.name}",
        extra={"guided_diffusion": json.loads(json.dumps(asdict(cfg)))},
    )
    with staged_dir(output_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "model.json").write_text(card.to_json(), encoding="utf-8")
    return Path(output_dir)
