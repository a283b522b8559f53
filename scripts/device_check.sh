#!/usr/bin/env bash
# The GPU check: prepared here, run in one `run` call on a lent GPU machine (docs/benchmarks.md, "GPU check").
#
#   scripts/device_check.sh --plan       here, with the package index: pack every runtime dependency the device
#                                        image lacks or has at another version into .whl/ (git-ignored); prints
#                                        each carried file, its size, and a last line `total N MiB`
#   scripts/device_check.sh              on the device machine: unpack .whl/, report versions and nvidia-smi,
#                                        run the `gpu` tests, the realtime benchmark (`small` realtime preset),
#                                        then the `full` benchmark; everything under $OUT
#   scripts/device_check.sh --cpu-smoke  here: the same steps on this CPU with the local .venv (`small` preset,
#                                        short audio), so that the script cannot rot between GPU runs
#
# Environment: OUT (where results go; default: a new folder under /tmp), DEVICE_CHECK_SECONDS (the whole
# run's budget; default 500 on the device, 600 for --cpu-smoke), DEVICE_CHECK_CACHE (--plan's download folder).
# Every step has its own timeout, cut to what is left of the budget; a summary is always written last.
set -uo pipefail
cd "$(dirname "$0")/.."

MODE=device
case "${1:-}" in
    --plan) MODE=plan ;;
    --cpu-smoke) MODE=cpu-smoke ;;
    "") ;;
    *) echo "usage: $0 [--plan|--cpu-smoke]" >&2; exit 2 ;;
esac

PY_VERSION=3.12  # the device image's python3 (the device tool's KINDS.md)
CARRY=.whl
BUNDLE=$CARRY/site-cp${PY_VERSION/./}.tar.xz
LIMIT_MIB=60  # what may travel, working tree included (the tool's limit is 64 MiB)
# On the device image (KINDS.md), at versions that can be trusted to meet the carried packages' loose lower
# bounds, and large or used by its torch: not carried. typing_extensions, idna and click are carried: pydantic
# 2.14 needs typing-extensions>=4.16, httpx2 idna>=3.18, huggingface-hub 2.4 click>=8.4.2. The device run's
# requirement check reports whatever falls short all the same.
DEVICE_HAS='^(pillow|hf_xet|tokenizers|tiktoken|safetensors|packaging|filelock|fsspec|pyyaml|requests|urllib3|certifi|charset_normalizer|pygments|rich|markdown_it_py|mdurl|typer|shellingham|attrs)-'

plan() {
    local cache="${DEVICE_CHECK_CACHE:-${TMPDIR:-/tmp}/voxtral-device-check}" pip=(.venv/bin/python -m pip)
    local platforms=(--only-binary=:all: --python-version "$PY_VERSION" --implementation cp)
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    rm -rf "$cache" && mkdir -p "$cache/wheels" "$cache/site" "$CARRY" || return 1
    # The runtime pins (torch stays: the image has its CUDA build) and the test tools the device run uses.
    grep -E '^[A-Za-z0-9_.-]+==' requirements.txt | grep -v '^torch==' >"$cache/requirements.txt"
    grep -E '^(openai|httpx|pytest)==' requirements-dev.txt >>"$cache/requirements.txt"
    echo "resolving for CPython $PY_VERSION, manylinux x86_64: $(tr '\n' ' ' <"$cache/requirements.txt")"
    "${pip[@]}" download -q "${platforms[@]}" -d "$cache/wheels" -r "$cache/requirements.txt" || return 1
    local wheels=() skipped=()
    for w in "$cache"/wheels/*.whl; do
        if [[ $(basename "$w") =~ $DEVICE_HAS ]]; then skipped+=("$(basename "$w")"); else wheels+=("$w"); fi
    done
    echo "left out (the device image has them): ${skipped[*]##*/}"
    "${pip[@]}" install -q --no-index --no-deps --no-compile --target "$cache/site" "${platforms[@]}" "${wheels[@]}" \
        || return 1
    # silero-vad ships its model in eight formats (9 MiB); load_silero_vad() reads only the TorchScript one.
    find "$cache/site/silero_vad/data" -type f ! -name silero_vad.jit ! -name '*.py' -delete 2>/dev/null || true
    # One xz stream of the installed tree is 52 MiB where the wheels themselves are 83 MB (PyAV's alone 35 MB).
    rm -f "$CARRY"/*
    echo "packing $(ls "$cache/site" | grep -c dist-info) distributions into $BUNDLE (xz: minutes)"
    tar -C "$cache/site" -cf - . | xz -T0 -6 >"$BUNDLE" || return 1
    (cd "$cache/site" && ls -d ./*.dist-info | sed 's|^\./||; s|\.dist-info$||') >"$CARRY/MANIFEST.txt"
    local tree carried
    tree=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
    carried=$(find "$CARRY" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
    awk -v t="$tree" 'BEGIN {printf "working tree (git ls-files): %.1f MiB\n", t / 1048576}'
    find "$CARRY" -type f -printf '%p\t%s\n' | sort | awk -F'\t' '{printf "%s %.1f MiB\n", $1, $2 / 1048576}'
    awk -v t="$((tree + carried))" 'BEGIN {printf "total %.1f MiB\n", t / 1048576}'
    if (((tree + carried) > LIMIT_MIB * 1048576)); then
        echo "over the ${LIMIT_MIB} MiB limit" >&2
        return 1
    fi
}

if [[ $MODE == plan ]]; then
    plan
    exit $?
fi

# --- device run and CPU smoke: steps under a budget, a summary whatever happens -------------------------
START=$SECONDS
if [[ $MODE == device ]]; then
    PY=python3 BUDGET=${DEVICE_CHECK_SECONDS:-500}
    PRESET=full DURATIONS=30,300,1800 CONCURRENCY=8 TOKENS=100 TESTS_CAP=150
    LIVE_SESSIONS=1,8,32 LIVE_SECONDS=10
    export GPU_TEST_DEVICE=cuda
else
    PY=.venv/bin/python BUDGET=${DEVICE_CHECK_SECONDS:-600}
    CHECK_SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')  # the checker checked
    PRESET=small DURATIONS=30,60 CONCURRENCY=2 TOKENS=40 TESTS_CAP=400
    LIVE_SESSIONS=1 LIVE_SECONDS=4
    export GPU_TEST_DEVICE=cpu
fi
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/device-check.XXXXXX")}
mkdir -p "$OUT" && : >"$OUT/steps.tsv"
export PYTHONUNBUFFERED=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
RESERVE=15  # seconds kept for the summary

finish() {
    trap - EXIT
    local rc=0
    "$PY" scripts/device_check.py summary "$OUT" >"$OUT/summary.txt" 2>&1 || rc=1
    if ! grep -q '^device_check: ' "$OUT/summary.txt"; then  # the summary itself broke: the steps at least
        { echo "steps:"; cat "$OUT/steps.tsv"; echo "device_check: FAILED (summary)"; } >>"$OUT/summary.txt"
    fi
    echo "== summary (also $OUT/summary.txt)"
    cat "$OUT/summary.txt"
    exit "$rc"
}
trap finish EXIT
trap 'exit 143' TERM INT

# step NAME CAP_SECONDS COMMAND...: run with a timeout of CAP, cut to what the budget has left; output to
# $OUT/NAME.log and this script's output; one line `NAME<TAB>status<TAB>seconds` in $OUT/steps.tsv.
step() {
    local name=$1 cap=$2 left began rc status
    shift 2
    left=$((BUDGET - (SECONDS - START) - RESERVE))
    ((cap > left)) && cap=$left
    if ((cap < 10)); then
        printf '%s\tskipped (no time left)\t0\n' "$name" >>"$OUT/steps.tsv"
        return 1
    fi
    echo "== $name (at most ${cap} s)"
    began=$SECONDS
    timeout -k 10 "$cap" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    case $rc in 0) status=ok ;; 124 | 137) status="timed out (${cap} s)" ;; *) status="failed (rc $rc)" ;; esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - began))" >>"$OUT/steps.tsv"
    return "$rc"
}

# Functions that `step` runs through `timeout bash -c NAME` (a timeout runs commands, not functions).
unpack() {
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$BUNDLE" "$SITE"
}

environment() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    "$PY" scripts/device_check.py env ${CHECK_SITE:+--site "$CHECK_SITE"}
}
export -f unpack environment
export PY BUNDLE CHECK_SITE

if [[ $MODE == device ]]; then
    export SITE=/tmp/voxtral-site CHECK_SITE=/tmp/voxtral-site
    rm -rf "$SITE" && mkdir -p "$SITE"
    if step unpack 90 bash -c unpack; then
        export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
    fi
fi
step env 60 bash -c environment
# The most valuable first: correctness on the device, then the figures (the benchmark writes its JSON after
# every row, so a run cut short keeps what it measured).
step tests "$TESTS_CAP" "$PY" -m pytest -q -rA -p no:cacheprovider -m gpu tests/test_gpu.py
# Live transcription: simulated microphones on /v1/realtime with the `small` realtime preset (a short step;
# its rows are the JSON lines of realtime.log: no file of its own, as the tool brings back 8 files at most).
step realtime 120 "$PY" scripts/benchmark.py --realtime --preset small --sessions "$LIVE_SESSIONS" \
    --seconds "$LIVE_SECONDS"
# http first: the targets are its rows; native's 30-minute prompt is the slowest row, concurrent the least needed.
step bench 600 "$PY" scripts/benchmark.py --preset "$PRESET" --durations "$DURATIONS" \
    --strategies http,engine,native,concurrent --concurrency "$CONCURRENCY" --tokens-per-30s "$TOKENS" \
    --json "$OUT/bench.json"
