"""`python -m training convert-guided-diffusion CKPT OUT`: a local guided-diffusion checkpoint (e.g.
256x256_diffusion_uncond.pt) -> a fusion-prior model folder. The conversion is core.fusion.convert."""
from __future__ import annotations

from core.fusion.convert import convert_checkpoint


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="guided-diffusion .pt state dict "
                        "(e.g. 256x256_diffusion_uncond.pt); loaded with weights_only=True")
    parser.add_argument("output", metavar="OUT", help="new or empty folder for the diffusers model + model.json")
    parser.add_argument("--num-head-channels", type=int, default=None,
                        help="channels per attention head, -1 to use --num-heads (default 64)")
    parser.add_argument("--num-heads", type=int, default=None,
                        help="heads per attention layer when --num-head-channels is -1 (default 4)")
    parser.add_argument("--image-size", type=int, default=None, help="training image size (default 256)")
    parser.add_argument("--new-attention-order", action="store_true",
                        help="the checkpoint was trained with use_new_attention_order=True (default: legacy)")
    parser.add_argument("--name", default="", help="model name for the card (default: the file name)")


def main(args) -> None:
    overrides = {key: value for key, value in (("num_head_channels", args.num_head_channels),
                                               ("num_heads", args.num_heads),
                                               ("image_size", args.image_size)) if value is not None}
    if getattr(args, "new_attention_order", False):
        overrides["use_new_attention_order"] = True
    out = convert_checkpoint(args.checkpoint, args.output, overrides, args.name)
    print(f"model written to {out}")
