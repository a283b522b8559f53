#!/usr/bin/env python3
"""Side-by-side speed of Voxtral transcription strategies on one random-weight model and the same audio.

  scripts/benchmark.py --preset small|full [--model DIR] [--durations 30,300,1800]
                       [--strategies native,sequential,engine,http,concurrent,preprocess] [--concurrency 8]
                       [--tokens-per-30s 100] [--repeat 1] [--json FILE]
  scripts/benchmark.py --scale-out [options]   (the front of one or two upstream servers: scale_out_benchmark.py)
  scripts/benchmark.py --realtime [options]    (simulated microphones on /v1/realtime: realtime_benchmark.py)

Strategies: native = the whole file as one `apply_transcription_request` prompt and one `generate`;
sequential = one `generate` per chunk in turn; engine = this server's engine (all chunks in one batch);
http = upload through the running server with the OpenAI SDK (plus time to the first streamed delta);
concurrent = `--concurrency` clients upload the same file at the same moment (wall time until all are done);
preprocess = decoding the MP3, cutting it into chunks and building every chunk's prompt and log-mel features
(no model; the engine does this work too, group by group, as rows are admitted).
Random weights stop at random places, so every strategy is made to generate the same tokens per chunk.
With --repeat N the strategies run N times over, interleaved (a, b, a, b, ...), and the ratios are taken
between medians, so that a slow moment of a shared machine does not decide them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cpu_time import cpu_jiffies, steal_percent  # noqa: E402

from voxtral_local.audio.chunking import split_audio  # noqa: E402
from voxtral_local.audio.decode import SAMPLE_RATE, decode_audio  # noqa: E402
from voxtral_local.backends.base import Sampling  # noqa: E402
from voxtral_local.backends.transformers import TransformersBackend  # noqa: E402
from voxtral_local.backends.transformers.prompts import transcription_inputs  # noqa: E402
from voxtral_local.config import Settings  # noqa: E402
from voxtral_local.testing.audio_files import encode, silence, speak  # noqa: E402
from voxtral_local.testing.tiny_model import NUM_SPECIAL_TOKENS, tiny_config, write_tekken  # noqa: E402

CAP_MARGIN = 32  # the engine's per-chunk margin (engine.core.CAP_MARGIN_TOKENS)
TEXT = (
    "Voxtral is a speech understanding model from Mistral. This benchmark reads the same paragraph again "
    "and again, with short pauses, so that the audio sounds like a long meeting or a lecture recording."
)


def preset_config(preset: str) -> tuple[Any, int]:
    """The model config and how many regular (non-special) vocabulary tokens its tokenizer keeps."""
    from transformers import VoxtralConfig

    if preset == "full":  # Voxtral-Mini-3B-2507: transformers' defaults plus the audio token id
        return VoxtralConfig(audio_token_id=24), 131072 - NUM_SPECIAL_TOKENS
    # small: a CPU-sized model with the same structure (see docs/benchmarks.md)
    config = tiny_config(NUM_SPECIAL_TOKENS + 4096)
    config.audio_config.update(
        {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4}
    )
    config.text_config.update(
        {
            "hidden_size": 512,
            "intermediate_size": 1536,
            "num_hidden_layers": 4,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "head_dim": 64,
        }
    )
    return config, 4096


def build_model(preset: str, model_dir: str | None, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoProcessor, VoxtralForConditionalGeneration

    if model_dir:
        model = VoxtralForConditionalGeneration.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
        return model.to(device).eval(), AutoProcessor.from_pretrained(model_dir)
    from transformers import VoxtralProcessor, WhisperFeatureExtractor
    from transformers.tokenization_mistral_common import MistralCommonBackend

    config, vocab_tokens = preset_config(preset)
    config._attn_implementation = "sdpa"
    folder = Path(tempfile.mkdtemp(prefix="voxtral-bench-"))
    write_tekken(folder, vocab_tokens=vocab_tokens)
    processor = VoxtralProcessor(
        feature_extractor=WhisperFeatureExtractor(
            feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
        ),
        tokenizer=MistralCommonBackend.from_pretrained(str(folder)),
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = VoxtralForConditionalGeneration(config).to(dtype)
    return model.eval(), processor


def make_audio(seconds: int, cache: Path) -> bytes:
    """Real speech (espeak-ng, or the test fixture when espeak-ng is missing) of this length, as MP3."""
    path = cache / f"speech-{seconds}s.mp3"
    if path.exists():
        return path.read_bytes()
    try:
        clip = speak(TEXT)
    except RuntimeError:
        clip = decode_audio((ROOT / "tests" / "fixtures" / "speech.wav").read_bytes(), max_seconds=60)
    unit = np.concatenate([clip, silence(0.6)])
    audio = np.tile(unit, seconds * SAMPLE_RATE // unit.shape[0] + 1)[: seconds * SAMPLE_RATE]
    path.write_bytes(encode(audio, "mp3"))
    return path.read_bytes()


class PeakMemory:
    """Peak resident memory of this process (sampled) and peak CUDA allocation during a block."""

    def __init__(self) -> None:
        self.rss_mb = 0.0
        self.cuda_mb: float | None = None

    @contextmanager
    def measure(self) -> Iterator[None]:
        done = threading.Event()
        self.rss_mb = _rss_mb()

        def sample() -> None:
            while not done.wait(0.01):
                self.rss_mb = max(self.rss_mb, _rss_mb())

        thread = threading.Thread(target=sample, daemon=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        thread.start()
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                self.cuda_mb = torch.cuda.max_memory_allocated() / 2**20
            done.set()
            thread.join()


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def chunk_caps(engine: TransformersBackend, samples: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    chunks = split_audio(samples, max_chunk_s=engine.settings.chunk_seconds)
    return [c.samples for c in chunks], [engine.token_cap(c.duration_s) for c in chunks]


def generate_forced(engine: TransformersBackend, inputs: Any, tokens: int) -> int:
    batch = {k: v.to(engine.device) for k, v in inputs.items()}
    batch["input_features"] = batch["input_features"].to(engine.dtype)
    with torch.inference_mode():
        out = engine.model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    return int(out.shape[1] - batch["input_ids"].shape[1]) * out.shape[0]


def run_native(engine: TransformersBackend, mp3: bytes) -> int:
    samples = decode_audio(mp3, max_seconds=4 * 3600)
    _, caps = chunk_caps(engine, samples)
    inputs = transcription_inputs(engine.processor, [samples], language="en", model_id="voxtral")
    return generate_forced(engine, inputs, sum(caps))


def run_sequential(engine: TransformersBackend, mp3: bytes) -> int:
    samples = decode_audio(mp3, max_seconds=4 * 3600)
    chunks, caps = chunk_caps(engine, samples)
    return sum(
        generate_forced(engine, transcription_inputs(engine.processor, [c], language="en", model_id="voxtral"), cap)
        for c, cap in zip(chunks, caps, strict=True)
    )


def run_engine(engine: TransformersBackend, mp3: bytes) -> int:
    samples = decode_audio(mp3, max_seconds=4 * 3600)
    chunks, caps = chunk_caps(engine, samples)
    outputs = engine.transcribe(chunks, language="en", sampling=Sampling(min_new_tokens=max(caps)))
    return sum(len(o.token_ids) for o in outputs)


def run_preprocess(engine: TransformersBackend, mp3: bytes) -> int:
    samples = decode_audio(mp3, max_seconds=4 * 3600)
    chunks, _ = chunk_caps(engine, samples)
    assert engine.features is not None and engine.device is not None
    engine.features(chunks, language="en", device=engine.device)
    return 0


def run_http(base_url: str, model: str, mp3: bytes, engine: TransformersBackend) -> tuple[int, float, float]:
    """Full transcript through the SDK, then a streamed request for its first delta.

    Returns the tokens and wall seconds of the full transcript, and the seconds to the first delta."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=3600)
    begin = time.perf_counter()
    raw = client.audio.transcriptions.with_raw_response.create(
        model=model, file=("a.mp3", mp3, "audio/mpeg"), response_format="verbose_json", language="en"
    )
    tokens = sum(len(s.tokens) for s in raw.parse().segments or [])
    full_seconds = time.perf_counter() - begin
    start = time.perf_counter()
    stream = client.audio.transcriptions.create(model=model, file=("a.mp3", mp3, "audio/mpeg"), stream=True)
    next(iter(stream))
    first_delta = time.perf_counter() - start
    stream.close()  # the server stops generating for it; wait so the next measurement runs alone
    while engine.busy:
        time.sleep(0.01)
    return tokens, full_seconds, first_delta


def run_concurrent(base_url: str, model: str, mp3: bytes, clients: int) -> int:
    """`clients` SDK clients upload at the same moment; returns the new tokens of all their transcripts."""
    from openai import OpenAI

    barrier = threading.Barrier(clients)
    tokens = [0] * clients

    def upload(i: int) -> None:
        client = OpenAI(base_url=f"{base_url}/v1", api_key="x", max_retries=0, timeout=3600)
        barrier.wait()
        result = client.audio.transcriptions.create(
            model=model, file=("a.mp3", mp3, "audio/mpeg"), response_format="verbose_json", language="en"
        )
        tokens[i] = sum(len(s.tokens) for s in result.segments or [])

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(tokens)


@contextmanager
def http_server(settings: Settings, engine: TransformersBackend) -> Iterator[str]:
    import uvicorn

    from voxtral_local.api import create_app

    app = create_app(settings, {engine.model_id: engine})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    if "--scale-out" in sys.argv[1:]:
        from scale_out_benchmark import main as scale_out

        scale_out([a for a in sys.argv[1:] if a != "--scale-out"])
        return
    if "--realtime" in sys.argv[1:]:
        from realtime_benchmark import main as realtime

        realtime([a for a in sys.argv[1:] if a != "--realtime"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["small", "full"], default="small")
    parser.add_argument("--model", help="a checkpoint directory instead of a preset")
    parser.add_argument("--durations", default="30,300,1800", help="audio lengths in seconds")
    parser.add_argument("--strategies", default="native,sequential,engine,http")
    parser.add_argument("--concurrency", type=int, default=8, help="clients of the concurrent strategy")
    parser.add_argument("--tokens-per-30s", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=1, help="run the strategies this many times, interleaved")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--port", type=int, default=0, help="port for the HTTP strategy (0: any free one)")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rate = (args.tokens_per_30s - CAP_MARGIN) / 30  # so that a full 30 s chunk gets exactly tokens-per-30s
    port = args.port or free_port()
    settings = Settings(_env_file=None, model="benchmark", port=port, model_ttl=-1, max_tokens_per_audio_second=rate)
    model, processor = build_model(args.preset, args.model, device, dtype)
    engine = TransformersBackend(settings.model, Path(settings.model), settings)  # in memory only: never loaded
    engine.adopt(model, processor)
    params = sum(p.numel() for p in model.parameters())
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(
        f"{args.preset} model, {params / 1e9:.2f} B parameters, {dtype} on {device}; every strategy generates "
        f"{args.tokens_per_30s} new tokens per full 30 s chunk (fewer for shorter chunks)",
        flush=True,
    )
    cache = Path(tempfile.gettempdir()) / "voxtral-bench-audio"
    cache.mkdir(exist_ok=True)
    strategies = args.strategies.split(",")
    runners: dict[str, Callable[[bytes], int]] = {
        "native": lambda mp3: run_native(engine, mp3),
        "sequential": lambda mp3: run_sequential(engine, mp3),
        "engine": lambda mp3: run_engine(engine, mp3),
        "preprocess": lambda mp3: run_preprocess(engine, mp3),
    }
    results: list[dict[str, Any]] = []
    memory = PeakMemory()
    run_engine(engine, make_audio(30, cache))  # warm-up: kernels, allocator, tokenizer caches
    with http_server(settings, engine) as url:
        for seconds in (int(d) for d in args.durations.split(",")):
            mp3 = make_audio(seconds, cache)
            for strategy in strategies * max(1, args.repeat):
                first_delta = None
                jiffies = cpu_jiffies()
                with memory.measure():
                    start = time.perf_counter()
                    if strategy == "http":
                        tokens, http_wall, first_delta = run_http(url, engine.model_id, mp3, engine)
                    elif strategy == "concurrent":
                        tokens = run_concurrent(url, engine.model_id, mp3, args.concurrency)
                    else:
                        tokens = runners[strategy](mp3)
                    wall = time.perf_counter() - start
                if strategy == "http":  # only the full-transcript request; the streamed one is timed apart
                    wall = http_wall
                row = {
                    "strategy": strategy if strategy != "concurrent" else f"concurrent-{args.concurrency}",
                    "audio_seconds": seconds,
                    "wall_seconds": round(wall, 3),
                    "rtfx": round(seconds / wall, 1),
                    "new_tokens": tokens,
                    "tokens_per_second": round(tokens / wall, 1),
                    "peak_rss_mb": round(memory.rss_mb),
                    "peak_cuda_mb": None if memory.cuda_mb is None else round(memory.cuda_mb),
                    "first_delta_seconds": None if first_delta is None else round(first_delta, 3),
                    "cpu_steal_percent": steal_percent(jiffies, cpu_jiffies()),
                }
                results.append(row)
                print(json.dumps(row), flush=True)
                if args.json:  # after every row, so that a run cut short keeps the rows it has
                    write_json(Path(args.json), args, device, weights_mb, results)
    print_ratios(results)


def write_json(
    path: Path, args: argparse.Namespace, device: torch.device, weights_mb: float, results: list[dict[str, Any]]
) -> None:
    """The machine, the model (its weights' size in MiB) and every row so far, as JSON."""
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
    }
    report = {
        "machine": machine,
        "preset": args.model or args.preset,
        "weights_mb": round(weights_mb),
        "tokens_per_30s": args.tokens_per_30s,
        "results": results,
    }
    path.write_text(json.dumps(report, indent=2))


def print_ratios(results: list[dict[str, Any]]) -> None:
    """Wall-time ratios per audio length, between the medians of repeated runs (and their range)."""
    walls: dict[tuple[str, int], list[float]] = {}
    for r in results:
        walls.setdefault((r["strategy"], r["audio_seconds"]), []).append(r["wall_seconds"])
    for seconds in sorted({r["audio_seconds"] for r in results}):
        parts = []
        concurrent = next((r["strategy"] for r in results if r["strategy"].startswith("concurrent")), "")
        for a, b in (("native", "engine"), ("sequential", "engine"), ("http", "engine"), (concurrent, "http")):
            if (a, seconds) in walls and (b, seconds) in walls:
                mine, theirs = walls[(a, seconds)], walls[(b, seconds)]
                part = f"{a}/{b} wall = {float(np.median(mine)) / float(np.median(theirs)):.2f}x"
                if len(mine) > 1 and len(mine) == len(theirs):  # run by run, interleaved
                    each = [x / y for x, y in zip(mine, theirs, strict=True)]
                    part += f" (runs: {min(each):.2f}-{max(each):.2f}x)"
                parts.append(part)
        print(f"{seconds:>5} s: " + ", ".join(parts))


if __name__ == "__main__":
    main()
