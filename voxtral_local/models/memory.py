"""What a checkpoint takes: bytes on disk, and the memory its weights need once loaded, without loading it.

The need is read from the safetensors headers (each file starts with an 8-byte little-endian header length
and a JSON header naming every tensor's dtype and shape): the elements of every tensor times the bytes of
the dtype it is loaded in. transformers casts floating-point weights to the load dtype (float32 weights of a
checkpoint loaded in bfloat16 take 2 bytes each); other tensors keep their own. Also here: the memory of the
device the models run on (the accelerator's, or the machine's RAM for a CPU).
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

# Bytes per element of each safetensors dtype; the floating ones are counted at the load dtype instead.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}  # fmt: skip
FLOATING = frozenset({"F64", "F32", "F16", "BF16"})
# A header longer than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024
# Mistral's own-format copy of the weights some directories also hold (`hf download --local-dir`): the model
# transformers loads does not read it, so it counts only when it is the only safetensors file.
MISTRAL_FORMAT_PREFIX = "consolidated"


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files transformers loads from `directory` (Mistral's consolidated copy left out
    when other safetensors files are there), sorted by name."""
    files = sorted(directory.glob("*.safetensors"))
    kept = [f for f in files if not f.name.startswith(MISTRAL_FORMAT_PREFIX)]
    return kept or files


def weights_bytes(directory: Path, dtype: torch.dtype) -> int | None:
    """Bytes the checkpoint's weights take loaded in `dtype`, from the safetensors headers alone (the tensor
    data is not read); None when the directory holds no safetensors file or a header cannot be read."""
    files = weight_files(directory)
    if not files:
        return None
    load_size = torch.tensor([], dtype=dtype).element_size()
    total = 0
    try:
        for path in files:
            for name, entry in _header(path).items():
                if name == "__metadata__":
                    continue
                kind = str(entry["dtype"])
                size = load_size if kind in FLOATING else DTYPE_BYTES.get(kind, 4)
                shape: list[int] = [int(n) for n in entry["shape"]]
                total += math.prod(shape) * size
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read the safetensors headers in %s: %s", directory, exc)
        return None
    return total


def _header(path: Path) -> dict[str, dict[str, Any]]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path.name} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > MAX_HEADER_BYTES:
            raise ValueError(f"{path.name} declares a {length}-byte header")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError(f"{path.name} has no safetensors header")
    return header


def disk_bytes(directory: Path) -> int:
    """Bytes of the files under `directory`, following symbolic links (a hub snapshot's files link to the
    cache's blobs); files that vanish or cannot be read meanwhile are left out."""
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


@dataclass(frozen=True)
class DeviceMemory:
    """The memory of a device in bytes: its total and what is available now (None when unknown)."""

    total: int | None
    available: int | None


def device_memory(device: torch.device) -> DeviceMemory:
    """Total and available memory of `device`: CUDA's `mem_get_info`, MPS's recommended maximum less what it
    holds, else the machine's RAM (`MemTotal` and `MemAvailable` of /proc/meminfo; unknown without it)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(int(total), int(free))
    if device.type == "mps":
        total = int(torch.mps.recommended_max_memory())
        return DeviceMemory(total, total - int(torch.mps.current_allocated_memory()))
    info: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("MemTotal", "MemAvailable"):
                info[name] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return DeviceMemory(info.get("MemTotal"), info.get("MemAvailable"))


def return_freed_memory() -> None:
    """Hand memory that freed tensors left in the C allocator's arenas back to the system (glibc's
    `malloc_trim`; nothing elsewhere). Without it, weights freed by an unload stay in the process's RSS: glibc
    keeps freed blocks below its mmap threshold, and the arenas of the threads that loaded them, for reuse."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def gib(n: int | None) -> str:
    """`n` bytes for a message: GiB from 1 GiB up ("1.25 GiB"), MiB below ("12.3 MiB"), or "an unknown
    amount"."""
    if n is None:
        return "an unknown amount"
    return f"{n / 1024**3:.2f} GiB" if abs(n) >= 1024**3 else f"{n / 1024**2:.1f} MiB"
