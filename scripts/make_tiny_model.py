#!/usr/bin/env python3
"""Build a random-weight Voxtral checkpoint for offline tests: `scripts/make_tiny_model.py --out DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxtral_local.testing.tiny_model import build_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    parser.add_argument("--silent", action="store_true", help="a model that only ever emits end-of-sequence")
    args = parser.parse_args()
    path = build_tiny_model(args.out, seed=args.seed, silent=args.silent)
    print(f"wrote {path}; serve it with VOXTRAL_MODEL={path}")


if __name__ == "__main__":
    main()
