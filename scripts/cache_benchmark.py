#!/usr/bin/env python3
"""Time and peak memory of rows joining and leaving a running batch's KV cache (`DecodeBatch.merge`/`keep`).

  scripts/cache_benchmark.py [--rows 56] [--joining 8] [--length 500] [--layers 30] [--kv-heads 8]
                             [--head-dim 128] [--dtype bfloat16] [--device cpu|cuda]

The defaults are Voxtral-Mini-3B's cache shape for a 30-minute file's batch (56 rows of ~500 tokens, then 8
more joining; 30 layers of 8 KV heads of 128, bfloat16): 3.2 GiB. No model is needed: the cache is filled
with random values. Peak memory is the process's resident high-water mark above where it started (Linux,
reset through /proc/self/clear_refs) on a CPU, or CUDA's peak allocation above the start on a GPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from voxtral_local.backends.transformers.decoding import DecodeBatch
from voxtral_local.backends.transformers.kv_cache import roomy_cache


def resident(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def measure(device: torch.device, action: Callable[[], object]) -> tuple[float, float]:
    """(seconds, GiB of peak memory above the start) of `action`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = resident("VmRSS")
    begin = time.perf_counter()
    action()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resident("VmHWM")
    return time.perf_counter() - begin, (peak - start) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=56)
    parser.add_argument("--joining", type=int, default=8)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    def batch(rows: int, length: int) -> DecodeBatch:
        shape = (rows, args.kv_heads, length, args.head_dim)
        layers = [
            ((torch.randn(shape, device=device, dtype=dtype),), (torch.randn(shape, device=device, dtype=dtype),))
            for _ in range(args.layers)
        ]
        cache = roomy_cache(layers, 0)
        del layers
        mask = torch.ones(rows, length, dtype=torch.long, device=device)
        return DecodeBatch(cache, mask, torch.full((rows,), length, device=device))

    running = batch(args.rows, args.length)
    size = 2 * args.layers * args.rows * args.kv_heads * args.length * args.head_dim * dtype.itemsize
    print(f"cache of {args.rows} rows x {args.length} tokens: {size / 2**30:.2f} GiB ({dtype} on {device})")
    joining = [batch(args.joining, args.length - 20)]  # in a list, so that the merge can let go of it
    seconds, peak = measure(device, lambda: running.merge(joining.pop(), room=130))
    print(f"merge {args.joining} rows in: {seconds:.3f} s, peak {peak:+.2f} GiB")
    total = args.rows + args.joining
    seconds, peak = measure(device, lambda: running.keep(list(range(0, total, 2)), room=100))
    print(f"keep every second row of {total}: {seconds:.3f} s, peak {peak:+.2f} GiB")


if __name__ == "__main__":
    main()
