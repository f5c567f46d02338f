"""`python -m training scenes`: write a procedural labelled dataset (folder format).

Unlimited, download-free training data for starter models, tests and demos.
"""
from __future__ import annotations

from core.data.scenes import write_scene_dataset


def add_arguments(parser) -> None:
    parser.add_argument("--output", required=True, help="dataset folder to write (images/, masks/, classes.json)")
    parser.add_argument("--count", type=int, default=100, help="number of scenes")
    parser.add_argument("--size", type=int, default=256, help="scene size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nir", action="store_true", help="add a near-infrared band")


def main(args) -> None:
    from tqdm.auto import tqdm
    folder = write_scene_dataset(args.output, args.count, args.size, args.seed, nir=args.nir)
    tqdm.write(f"{args.count} scenes written to {folder}")
