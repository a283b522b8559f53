"""scripts/serve_vllm.sh: the vLLM command lines it prints and runs, its refusals, and stopping its replicas.

No vLLM is installed here: --dry-run prints what would run, and a stand-in executable (a shell script that
records its arguments and CUDA_VISIBLE_DEVICES) takes vllm's place where the script really starts replicas.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "serve_vllm.sh"
MISTRAL = "--tokenizer_mode mistral --config_format mistral --load_format mistral"
MINI = "mistralai/Voxtral-Mini-3B-2507"


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the script with bash; never more than 30 s (it starts nothing that lasts in these cases)."""
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=30, env=env or dict(os.environ)
    )


def dry_run(*args: str) -> list[str]:
    run = serve("--dry-run", *args)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


def command(gpus: str, port: int, tail: str = "", model: str = MINI, host: str = "127.0.0.1") -> str:
    line = f"CUDA_VISIBLE_DEVICES={gpus} vllm serve {model} {MISTRAL} --host {host} --port {port}"
    return f"{line} {tail}" if tail else line


def test_defaults_one_mini_server_on_gpu_0_port_8000() -> None:
    assert dry_run() == [command("0", 8000), "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000"]


def test_replicas_get_one_gpu_and_one_port_each() -> None:
    assert dry_run("--replicas", "2") == [
        command("0", 8000),
        command("1", 8001),
        "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000,http://127.0.0.1:8001",
    ]


def test_tensor_parallel_replicas_span_consecutive_gpus() -> None:
    small = "mistralai/Voxtral-Small-24B-2507"
    assert dry_run("--model", small, "--replicas", "2", "--tensor-parallel-size", "2") == [
        command("0,1", 8000, "--tensor-parallel-size 2", model=small),
        command("2,3", 8001, "--tensor-parallel-size 2", model=small),
        "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000,http://127.0.0.1:8001",
    ]


def test_gpu_list_port_and_host_are_used_as_given() -> None:
    assert dry_run("--gpus", "4,5", "--replicas", "2", "--port", "9000", "--host", "10.0.0.7") == [
        command("4", 9000, host="10.0.0.7"),
        command("5", 9001, host="10.0.0.7"),
        "VOXTRAL_VLLM_URLS=http://10.0.0.7:9000,http://10.0.0.7:9001",
    ]
    assert dry_run("--gpus=4,5", "--tensor-parallel-size=2") == [
        command("4,5", 8000, "--tensor-parallel-size 2"),
        "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000",
    ]


def test_more_gpus_than_needed_uses_the_first_and_says_so() -> None:
    run = serve("--dry-run", "--gpus", "4,5,6")
    assert run.returncode == 0
    assert run.stdout.splitlines()[0] == command("4", 8000)
    assert "using the first 1 of the GPUs listed (4,5,6)" in run.stderr


def test_all_interfaces_give_urls_with_this_machines_name() -> None:
    lines = dry_run("--host", "0.0.0.0")
    assert lines == [command("0", 8000, host="0.0.0.0"), f"VOXTRAL_VLLM_URLS=http://{socket.gethostname()}:8000"]


def test_gpus_all_leaves_cuda_visible_devices_to_vllm() -> None:
    assert dry_run("--gpus", "all", "--vllm", "/opt/vllm/bin/vllm") == [
        f"/opt/vllm/bin/vllm serve {MINI} {MISTRAL} --host 127.0.0.1 --port 8000",
        "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000",
    ]


def test_arguments_after_double_dash_go_to_every_replica_shell_quoted() -> None:
    extra = ["--max-model-len", "8192", "--served-model-name", "voxtral mini", "--distributed-executor-backend", "ray"]
    tail = "--max-model-len 8192 --served-model-name voxtral\\ mini --distributed-executor-backend ray"
    assert dry_run("--replicas", "2", "--", *extra) == [
        command("0", 8000, tail),
        command("1", 8001, tail),
        "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000,http://127.0.0.1:8001",
    ]


def test_an_api_key_for_vllm_is_a_reminder_to_set_voxtral_vllm_api_key() -> None:
    run = serve("--dry-run", "--", "--api-key", "secret")
    assert run.returncode == 0
    assert run.stdout.splitlines()[0] == command("0", 8000, "--api-key secret")
    assert "set VOXTRAL_VLLM_API_KEY to the key given to --api-key" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "two"], "--replicas must be a whole number of at least 1, not 'two'"),
        (["--replicas", "0"], "--replicas must be a whole number of at least 1, not '0'"),
        (["--tensor-parallel-size", "-1"], "--tensor-parallel-size must be a whole number of at least 1, not '-1'"),
        (["--port", "70000"], "--port must be a port number (1-65535), not '70000'"),
        (["--port", "65535", "--replicas", "2"], "--port 65535 with --replicas 2 runs past port 65535"),
        (["--replicas", "2", "--tensor-parallel-size", "2", "--gpus", "0,1,2"],
         "too few GPUs: --replicas 2 x --tensor-parallel-size 2 needs 4, --gpus lists 3 (0,1,2)"),
        (["--gpus", "0,,1"], "--gpus must be comma-separated GPU ids such as 0,1 (or all), not '0,,1'"),
        (["--gpus", "1,1", "--replicas", "2"], "--gpus lists GPU 1 twice"),
        (["--gpus", "all", "--replicas", "2"], "--gpus all runs one replica; list the GPUs for --replicas 2"),
        (["--bogus"], "unknown option: --bogus"),
        (["--port"], "--port needs a value"),
        (["--", "--port", "9000"], "give --port as this script's option, not after --"),
        (["--", "--tensor-parallel-size=2"], "give --tensor-parallel-size as this script's option, not after --"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_with_the_reason_and_the_usage(args: list[str], message: str) -> None:
    run = serve("--dry-run", *args)
    assert run.returncode == 2
    assert run.stdout == ""
    assert f"serve_vllm.sh: {message}\n" in run.stderr
    assert "usage: " in run.stderr and "--tensor-parallel-size T" in run.stderr


def test_help_prints_the_usage() -> None:
    run = serve("--help")
    assert run.returncode == 0 and run.stdout.startswith("usage: ") and "--dry-run" in run.stdout


def test_without_vllm_it_says_how_to_install_it() -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    run = serve(env=env)
    assert run.returncode == 2
    assert "'vllm' is not on PATH" in run.stderr and "pip install 'vllm[audio]'" in run.stderr
    run = serve("--vllm", "/nonexistent/bin/vllm")
    assert run.returncode == 2
    assert "--vllm /nonexistent/bin/vllm is not an executable file" in run.stderr


# A stand-in replica's life: until SIGTERM, which it passes on to its sleep (no orphan keeps the pipes open).
SLEEP = "sleep 300 >/dev/null 2>&1 &\nchild=$!\ntrap 'kill $child; exit 0' TERM\nwait"


def stand_in_vllm(tmp_path: Path, body: str) -> Path:
    """An executable that records `CUDA_VISIBLE_DEVICES args...` in calls/<port>, then runs BODY."""
    path = tmp_path / "vllm"
    calls = tmp_path / "calls"
    calls.mkdir()
    path.write_text(
        "#!/usr/bin/env bash\n"
        f'args="$*"\nwhile (($# > 0)); do if [[ $1 == --port ]]; then port=$2; fi; shift; done\n'
        f'echo "${{CUDA_VISIBLE_DEVICES-unset}} $args" > {calls}/"$port"\n{body}\n'
    )
    path.chmod(0o755)
    return path


def test_one_replica_runs_vllm_in_place_with_its_gpus(tmp_path: Path) -> None:
    vllm = stand_in_vllm(tmp_path, "exit 3")
    run = serve("--vllm", str(vllm), "--gpus", "2")
    assert run.returncode == 3  # the script became vllm: its exit status is vllm's
    recorded = (tmp_path / "calls" / "8000").read_text()
    assert recorded == f"2 serve {MINI} {MISTRAL} --host 127.0.0.1 --port 8000\n"


def test_replicas_run_together_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    vllm = stand_in_vllm(tmp_path, f"echo $$ >> {pids}\n{SLEEP}")
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), "--vllm", str(vllm), "--replicas", "2", "--tensor-parallel-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(pids.read_text().split() if pids.exists() else []) < 2:
            time.sleep(0.05)
        started = [int(pid) for pid in pids.read_text().split()]
        assert len(started) == 2
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert "stopping 2 replicas" in stderr
    assert stdout.splitlines()[-1] == "VOXTRAL_VLLM_URLS=http://127.0.0.1:8000,http://127.0.0.1:8001"
    assert (tmp_path / "calls" / "8000").read_text().startswith("0,1 serve ")
    assert (tmp_path / "calls" / "8001").read_text().startswith("2,3 serve ")
    for pid in started:  # both replicas are gone (the script waited for them)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_one_replica_exiting_stops_the_others(tmp_path: Path) -> None:
    body = f"if [[ $port == 8001 ]]; then exit 5; fi\n{SLEEP}"
    vllm = stand_in_vllm(tmp_path, body)
    run = subprocess.run(
        ["bash", str(SCRIPT), "--vllm", str(vllm), "--replicas", "3"], capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 5
    assert "a replica exited (status 5)" in run.stderr and "stopping 3 replicas" in run.stderr
