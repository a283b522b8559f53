#!/usr/bin/env python3
"""Regenerate tests/fixtures/speech.* (espeak-ng speech in every supported format). Needs espeak-ng."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voxtral_local.testing.audio_files import FORMATS, encode, speak  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. Voxtral transcribes this sentence on a local server."


def main() -> None:
    out = ROOT / "tests" / "fixtures"
    out.mkdir(parents=True, exist_ok=True)
    samples = speak(TEXT)
    for extension in FORMATS:
        path = out / f"speech.{extension}"
        path.write_bytes(encode(samples, extension))
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
