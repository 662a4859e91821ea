"""Scripted go-and-return exploration in the world model, saved as an mp4 and a dataset.

python examples/explore.py --model tiny-random --chunks 8 --out explore_out
"""

from __future__ import annotations

import argparse
import logging

from mg3_env.cli import demo
from world_model.checks import positive_arg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--chunks", type=positive_arg, default=8)
    p.add_argument("--out", default="explore_out")
    p.add_argument("--device", default=None)
    p.add_argument("--image", default=None)
    p.add_argument("--prompt", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = demo(args.model, args.chunks, args.out, device=args.device, image=args.image, prompt=args.prompt)
    logging.info("wrote %s and %s", paths["video"], paths["dataset"])


if __name__ == "__main__":
    main()
