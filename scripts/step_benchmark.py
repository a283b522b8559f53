#!/usr/bin/env python3
"""Time one decoding step of the engine's `DecodeBatch` under different KV caches (and `torch.compile`).

  scripts/step_benchmark.py --preset small [--rows 11] [--cached 420,3000] [--steps 100]
                            [--modes concatenating,in-place,compiled] [--repeats 3]

concatenating = transformers' `DynamicCache` (every step copies the whole cache); in-place = the engine's cache
with reserved room (`engine/kv_cache.py`); compiled = in-place with the model wrapped in
`torch.compile(dynamic=True)` (the first step's compile time is reported apart). Rows are left-padded
unevenly, as in a running batch. Prints milliseconds per step, and whether every mode chose the same tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import build_model

from voxtral_local.backends.transformers.decoding import DecodeBatch


def run(model: Any, forward: Any, rows: int, cached: int, steps: int, in_place: bool) -> tuple[float, float, Any]:
    """(seconds of the first step, ms per later step, the tokens chosen) for one batch."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 5000, (rows, cached), generator=generator, device="cpu").to(model.device)
    mask = torch.ones_like(ids)
    for row in range(rows):
        mask[row, : (row * 7) % 40] = 0  # uneven left padding
    with torch.inference_mode():
        batch, logits = DecodeBatch.prefill(model, {"input_ids": ids, "attention_mask": mask})
        batch.last = logits.argmax(-1)
        if in_place:
            batch.reserve(steps + 1)
        begin = time.perf_counter()
        chosen = [batch.step(forward).argmax(-1)]
        first = time.perf_counter() - begin
        begin = time.perf_counter()
        for _ in range(steps):
            batch.last = batch.step(forward).argmax(-1)
            chosen.append(batch.last)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - begin) / steps * 1000
    return first, per_step, torch.stack(chosen).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["small", "full"], default="small")
    parser.add_argument("--rows", type=int, default=11)
    parser.add_argument("--cached", default="420,3000", help="prompt tokens already in the cache")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--modes", default="concatenating,in-place,compiled")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, _ = build_model(args.preset, None, device, dtype)
    compiled = torch.compile(model, dynamic=True) if "compiled" in args.modes else None
    for cached in (int(c) for c in args.cached.split(",")):
        tokens: dict[str, Any] = {}
        for repeat in range(args.repeats):
            line = []
            for mode in args.modes.split(","):
                forward = compiled if mode == "compiled" else model
                first, per_step, chosen = run(model, forward, args.rows, cached, args.steps, mode != "concatenating")
                tokens.setdefault(mode, chosen)
                line.append(f"{mode} {per_step:.1f} ms")
                if mode == "compiled" and repeat == 0:
                    line[-1] += f" (first step, compiling: {first:.1f} s)"
            print(f"{args.rows} rows, {cached} cached tokens: " + ", ".join(line), flush=True)
        same = all(torch.equal(t, next(iter(tokens.values()))) for t in tokens.values())
        print(f"  same tokens in every mode: {same}")


if __name__ == "__main__":
    main()
