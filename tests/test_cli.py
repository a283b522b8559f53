"""The `voxtral-local` command line, every command run as a user runs it: a subprocess (`python -m voxtral_local`,
which is what the console script calls), against a real server process or the real app it serves in-process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from voxtral_local.config import Settings
from voxtral_local.testing.audio_files import encode, silence

from .conftest import FIXTURES, free_port
from .hub_mirror import HubMirror, Repo, serve_mirror
from .server_process import ROOT, ServerProcess, serve_process, wait_until_serving

HUB_REPO = "mistralai/Voxtral-Mini-3B-2507"


def cli_env(**variables: str) -> dict[str, str]:
    """The environment of a CLI process: no VOXTRAL_* from this one, no network, wide help text; `variables`
    on top."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXTRAL_")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", COLUMNS="200")
    env.update(variables)
    return env


def cli(*args: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m voxtral_local ARGS` in `cwd` (where it reads `.env`) and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "voxtral_local", *args],
        cwd=cwd,
        env=cli_env(**variables),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def audio(tmp_path: Path) -> Path:
    """A folder with two speech files (WAV and MP3) and nothing else."""
    folder = tmp_path / "audio"
    folder.mkdir()
    shutil.copy(FIXTURES / "speech.wav", folder / "hello.wav")
    shutil.copy(FIXTURES / "speech.mp3", folder / "second.mp3")
    return folder


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server process on the tiny model that wants an API key."""
    log = tmp_path_factory.mktemp("cli-server") / "server.log"
    with serve_process(tiny_model_dir, log, api_key="cli-key", log_level="warning") as running:
        yield running


# serve and start_server.sh


def test_serve_help_names_every_setting_its_variable_and_default(tmp_path: Path) -> None:
    result = cli("serve", "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout and "[env: VOXTRAL_PORT; default: 11344]" in result.stdout
    assert "--preload / --no-preload" in result.stdout
    for name in Settings.model_fields:
        assert f"VOXTRAL_{name.upper()}" in result.stdout


def test_serve_port_flag_overrides_the_environment_and_logs_one_startup_line(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "voxtral_local", "serve", "--port", str(port), "--max-queue", "3"],
            cwd=tmp_path,
            env=cli_env(VOXTRAL_MODEL=str(tiny_model_dir), VOXTRAL_PORT=str(free_port())),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}", log=log.read_text())
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["model"] == "voxtral-tiny"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    startup = [line for line in log.read_text().splitlines() if f"listening on 127.0.0.1:{port}" in line]
    assert len(startup) == 1, log.read_text()
    assert str(tiny_model_dir) in startup[0] and "device cpu, dtype float32" in startup[0]
    assert "max upload 100 MiB, max audio 180 min, max queue 3" in startup[0]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this checkout with a `.venv` of its own whose packages are this interpreter's (a path
    file), so that `start_server.sh` runs its real setup, offline: the pins are there, the project gets
    installed (the `voxtral-local` script), and the venv the tests run in is left alone."""
    root = tmp_path_factory.mktemp("checkout") / "voxtral-local"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / ".venv")], check=True)
    site = next((root / ".venv" / "lib").glob("python3*/site-packages"))
    (site / "voxtral-test-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def test_start_server_sh_passes_its_arguments_to_serve(checkout: Path, tiny_model_dir: Path) -> None:
    env = cli_env(VOXTRAL_MODEL=str(tiny_model_dir))
    env.pop("PYTHONPATH")
    helped = subprocess.run(
        ["./start_server.sh", "--help"], cwd=checkout, env=env, capture_output=True, text=True, timeout=300
    )
    assert helped.returncode == 0, helped.stderr
    assert "serve [OPTIONS]" in helped.stdout and "VOXTRAL_PORT" in helped.stdout

    port = free_port()
    process = subprocess.Popen(["./start_server.sh", "--port", str(port)], cwd=checkout, env=env)
    try:
        wait_until_serving(process, f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0

    script = checkout / ".venv" / "bin" / "voxtral-local"  # installed by the setup
    shown = subprocess.run([str(script), "config", "--json"], cwd=checkout, env=env, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["model"] == str(tiny_model_dir)


# config


def test_config_shows_flags_over_environment_over_dotenv_and_masks_the_key(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("VOXTRAL_BATCH_SIZE=3\nVOXTRAL_MAX_QUEUE=4\nVOXTRAL_PORT=1234\n")
    env = {"VOXTRAL_API_KEY": "top-secret-key", "VOXTRAL_MAX_QUEUE": "5", "VOXTRAL_PORT": "2345"}

    shown = cli("config", "--port", "9000", "--no-preload", cwd=tmp_path, **env)

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "VOXTRAL_PORT=9000" in lines  # the flag
    assert "VOXTRAL_MAX_QUEUE=5" in lines  # the environment over .env
    assert "VOXTRAL_BATCH_SIZE=3" in lines  # .env
    assert "VOXTRAL_PRELOAD=false" in lines
    assert "VOXTRAL_API_KEY=********" in lines
    assert "top-secret-key" not in shown.stdout + shown.stderr

    as_json = json.loads(cli("config", "--json", cwd=tmp_path, **env).stdout)
    assert as_json["port"] == 2345 and as_json["api_key"] == "********" and as_json["model_aliases"] == ""


def test_config_refuses_an_invalid_value_naming_the_variable(tmp_path: Path) -> None:
    result = cli("config", "--port", "0", cwd=tmp_path)

    assert result.returncode == 2
    assert "VOXTRAL_PORT" in result.stderr and "greater than or equal to 1" in result.stderr


# transcribe


@pytest.mark.slow  # in-process transcribe also runs in the json test
def test_transcribe_in_process_writes_one_file_per_input_and_reports_a_missing_one(
    tiny_model_dir: Path, audio: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    files = [str(audio / "hello.wav"), str(audio / "missing.wav"), str(audio / "second.mp3")]

    result = cli(
        "transcribe", *files, "--format", "srt", "--output-dir", str(out), cwd=tmp_path, **model(tiny_model_dir)
    )

    assert result.returncode == 1  # one file failed; the others were written
    assert "missing.wav: no such file" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["hello.srt", "second.srt"]
    for srt in out.iterdir():
        assert srt.read_text().startswith("1\n00:00:00,000 --> ")


# The in-process path is in the default loop (writing files); the JSON formats to stdout run with `-m slow`.
@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["json", "verbose_json"])
def test_transcribe_in_process_json_formats_to_stdout(tiny_model_dir: Path, audio: Path, fmt: str) -> None:
    result = cli("transcribe", str(audio / "hello.wav"), "--format", fmt, cwd=audio, **model(tiny_model_dir))

    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert isinstance(answer["text"], str) and answer["text"]
    if fmt == "verbose_json":
        assert answer["segments"] and answer["duration"] > 0
    assert sorted(p.name for p in audio.iterdir()) == ["hello.wav", "second.mp3"]  # nothing written beside


def test_transcribe_against_a_server_streams_text_with_progress_and_sends_the_key(
    server: ServerProcess, audio: Path, tmp_path: Path
) -> None:
    args = ("transcribe", str(audio / "hello.wav"), "--server", server.url, "--format", "text")

    result = cli(*args, "--api-key", "cli-key", "--progress", cwd=tmp_path)
    from_env = cli(*args, cwd=tmp_path, VOXTRAL_API_KEY="cli-key")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and not result.stdout.lstrip().startswith("{")
    assert "hello.wav" in result.stderr  # the progress line
    assert from_env.returncode == 0 and from_env.stdout == result.stdout  # greedy decoding: the same text
    assert from_env.stderr == ""  # no progress when stderr is not a terminal


def test_transcribe_progress_follows_the_seconds_of_audio_the_server_reports(
    server: ServerProcess, speech: np.ndarray, tmp_path: Path
) -> None:
    long = tmp_path / "long.wav"  # three chunks: the server reports progress as they finish
    long.write_bytes(encode(np.concatenate([speech, silence(30.0), speech, silence(30.0), speech]), "wav"))

    result = cli("transcribe", str(long), "--server", server.url, "--api-key", "cli-key", "--progress", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)  # the bar's text without its colours
    assert re.search(r"\b(\d+)/\1 s audio", shown), shown  # the bar ends at the total


def test_transcribe_against_a_server_prints_the_servers_error_and_goes_on(
    server: ServerProcess, audio: Path, tmp_path: Path
) -> None:
    junk = audio / "junk.mp3"
    junk.write_bytes(b"this is not audio" * 100)
    out = tmp_path / "out"
    args = ("transcribe", str(junk), str(audio / "hello.wav"), "--server", server.url, "-o", str(out), "-f", "vtt")

    refused = cli(*args, "--api-key", "wrong", cwd=tmp_path)
    result = cli(*args, "--api-key", "cli-key", cwd=tmp_path)

    assert refused.returncode == 1 and "API key" in refused.stderr
    assert result.returncode == 1
    assert "junk.mp3:" in result.stderr and "audio" in result.stderr.lower()
    assert [p.name for p in out.iterdir()] == ["hello.vtt"]
    assert (out / "hello.vtt").read_text().startswith("WEBVTT")


def test_transcribe_refuses_files_whose_outputs_would_overwrite_each_other(audio: Path, tmp_path: Path) -> None:
    (audio / "sub").mkdir()
    (audio / "sub" / "hello.wav").write_bytes((audio / "hello.wav").read_bytes())
    out = tmp_path / "out"

    result = cli("transcribe", str(audio / "hello.wav"), str(audio / "sub" / "hello.wav"), "-o", str(out), cwd=tmp_path)
    directory = cli("transcribe", str(audio / "sub"), cwd=tmp_path, VOXTRAL_MODEL=str(tmp_path / "no-model"))

    assert result.returncode == 1 and "would write the same output file (hello.json)" in result.stderr
    assert not out.exists()  # refused before any work
    assert directory.returncode == 1 and "sub: a directory" in directory.stderr


def test_transcribe_without_any_file_starts_nothing(tmp_path: Path) -> None:
    result = cli("transcribe", str(tmp_path / "nope.wav"), cwd=tmp_path, VOXTRAL_MODEL=str(tmp_path / "no-model"))

    assert result.returncode == 1
    assert "nope.wav: no such file" in result.stderr


# ls, pull, ps, rm


@pytest.mark.slow  # in-process pull and ls also run in the rm test
def test_ls_and_pull_in_process_for_a_local_model_directory(tiny_model_dir: Path, tmp_path: Path) -> None:
    listed = cli("ls", cwd=tmp_path, **model(tiny_model_dir))
    pulled = cli("pull", "voxtral-tiny", cwd=tmp_path, **model(tiny_model_dir))
    quiet = cli("pull", "voxtral-tiny", "--quiet", cwd=tmp_path, **model(tiny_model_dir))
    unknown = cli("pull", "no-such-model", cwd=tmp_path, **model(tiny_model_dir))

    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "ALIAS", "OF", "DOWNLOADED", "LOADED", "SIZE", "MEMORY"]
    assert [row.split()[:3] for row in rows if row.startswith("voxtral-tiny ")] == [["voxtral-tiny", "yes", "no"]]
    assert pulled.returncode == 0, pulled.stderr
    assert "voxtral-tiny: success" in pulled.stderr
    assert quiet.returncode == 0 and quiet.stderr == quiet.stdout == ""
    assert unknown.returncode == 1 and "no-such-model" in unknown.stderr


def test_ls_json_lists_the_served_models(server: ServerProcess, tmp_path: Path) -> None:
    result = cli("ls", "--json", "--server", server.url, "--api-key", "cli-key", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "voxtral-tiny" in {entry["id"] for entry in json.loads(result.stdout)["data"]}


@pytest.fixture(scope="module")
def mirror(tiny_model_dir: Path) -> Iterator[HubMirror]:
    with serve_mirror(HubMirror(repos={HUB_REPO: Repo(tiny_model_dir)})) as served:
        yield served


def hub(mirror: HubMirror, home: Path) -> dict[str, str]:
    return {"HF_ENDPOINT": mirror.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "VOXTRAL_MODEL": HUB_REPO}


def listed(ls_json: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The hub model's entry in the output of `ls --json`."""
    assert ls_json.returncode == 0, ls_json.stderr
    return next(entry for entry in json.loads(ls_json.stdout)["data"] if entry["id"] == HUB_REPO)


@pytest.mark.slow  # pull and ls of a hub model also run in the rm test; this one adds the bar
def test_pull_downloads_a_hub_model_with_progress_and_ls_shows_it(mirror: HubMirror, tmp_path: Path) -> None:
    home = tmp_path / "hf"

    before = cli("ls", "--json", cwd=tmp_path, **hub(mirror, home))
    pulled = cli("pull", HUB_REPO, "--progress", cwd=tmp_path, **hub(mirror, home))
    after = cli("ls", "--json", cwd=tmp_path, **hub(mirror, home))

    assert pulled.returncode == 0, pulled.stderr
    assert f"{HUB_REPO}: success" in pulled.stderr and "━" in pulled.stderr  # the bar
    assert listed(before)["downloaded"] is False
    assert listed(after)["downloaded"] is True


def test_rm_deletes_a_pulled_hub_model(mirror: HubMirror, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    assert cli("pull", HUB_REPO, cwd=tmp_path, **hub(mirror, home)).returncode == 0

    removed = cli("rm", HUB_REPO, cwd=tmp_path, **hub(mirror, home))
    after = cli("ls", "--json", cwd=tmp_path, **hub(mirror, home))

    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"{HUB_REPO}: deleted"
    assert listed(after)["downloaded"] is False


def test_rm_never_deletes_a_local_directory_and_names_an_unknown_model(
    server: ServerProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    key = ("--server", server.url, "--api-key", "cli-key")

    local = cli("rm", "voxtral-tiny", *key, cwd=tmp_path)
    unknown = cli("rm", "no-such-model", *key, cwd=tmp_path)

    assert (tiny_model_dir / "config.json").is_file()
    assert local.returncode == 1 and local.stderr.startswith("error: ")
    assert unknown.returncode == 1 and "no-such-model" in unknown.stderr


def test_ps_lists_the_loaded_model_of_a_server(server: ServerProcess, audio: Path, tmp_path: Path) -> None:
    key = ("--server", server.url, "--api-key", "cli-key")
    assert cli("transcribe", str(audio / "hello.wav"), *key, cwd=tmp_path).returncode == 0

    result = cli("ps", *key, cwd=tmp_path)
    as_json = cli("ps", "--json", "--server", server.url.removeprefix("http://"), "--api-key", "cli-key", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split()[:3] == ["ID", "DEVICE", "DTYPE"]
    assert result.stdout.splitlines()[1].split()[:2] == ["voxtral-tiny", "cpu"]
    assert json.loads(as_json.stdout)["models"] == ["voxtral-tiny"]


def test_ps_without_a_server_says_none_is_running(tmp_path: Path) -> None:
    result = cli("ps", cwd=tmp_path, VOXTRAL_PORT=str(free_port()))

    assert result.returncode == 1
    assert "no server is running at http://127.0.0.1:" in result.stderr


def model(model_dir: Path) -> dict[str, str]:
    return {"VOXTRAL_MODEL": str(model_dir)}
