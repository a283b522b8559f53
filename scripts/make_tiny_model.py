#!/usr/bin/env python3
"""Build a random-weight Voxtral checkpoint for offline tests: `scripts/make_tiny_model.py --out DIR`;
`--realtime [--preset small]` builds a Voxtral Realtime one instead (`small`: CPU-sized, for benchmarks)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxtral_local.testing.tiny_model import build_tiny_model
from voxtral_local.testing.tiny_realtime import build_tiny_realtime_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="directory to write the checkpoint to")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    parser.add_argument("--silent", action="store_true", help="a model that only ever emits end-of-sequence")
    parser.add_argument("--realtime", action="store_true", help="a Voxtral Realtime checkpoint (live streaming)")
    parser.add_argument("--preset", choices=["tiny", "small"], default="tiny", help="realtime model size")
    args = parser.parse_args()
    if args.realtime:
        if args.silent:
            parser.error("--silent applies to the standard model only")
        path = build_tiny_realtime_model(args.out, preset=args.preset, seed=args.seed)
    else:
        if args.preset != "tiny":
            parser.error("--preset applies to --realtime only")
        path = build_tiny_model(args.out, seed=args.seed, silent=args.silent)
    print(f"wrote {path}; serve it with VOXTRAL_MODEL={path}")


if __name__ == "__main__":
    main()
