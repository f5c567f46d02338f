"""`python -m training <subcommand>`: fit every model of rs-diffusion headlessly."""
from __future__ import annotations

import argparse
import logging
import sys

from training import satsynth, scenes, segment

SUBCOMMANDS = {
    "scenes": (scenes, "write a procedural labelled dataset (no download needed)"),
    "segment": (segment, "train a segmentation model on a folder of image/mask pairs"),
    "satsynth": (satsynth, "train the SatSynth joint image + label diffusion model"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    SUBCOMMANDS[args.command][0].main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
