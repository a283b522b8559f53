#!/usr/bin/env bash
# Start vLLM for Voxtral: one or several OpenAI-compatible servers for this server to front
# (VOXTRAL_BACKEND=vllm or VOXTRAL_VLLM_URLS; docs/scale-out.md).
#
#   scripts/serve_vllm.sh                                  Voxtral Mini on GPU 0, port 8000
#   scripts/serve_vllm.sh --replicas 4                     four servers, GPUs 0-3, ports 8000-8003
#   scripts/serve_vllm.sh --model mistralai/Voxtral-Small-24B-2507 --tensor-parallel-size 2
#                                                          Voxtral Small on GPUs 0 and 1
#   scripts/serve_vllm.sh --dry-run --replicas 2           print the commands and VOXTRAL_VLLM_URLS only
#   scripts/serve_vllm.sh -- --max-model-len 8192          anything after -- goes to every `vllm serve`
#
# Each replica runs `vllm serve MODEL --tokenizer_mode mistral --config_format mistral --load_format mistral
# --host HOST --port PORT` with CUDA_VISIBLE_DEVICES set to its own GPUs; the script prints the
# VOXTRAL_VLLM_URLS value that lists them. With several replicas it starts them in the background and waits;
# Ctrl-C or SIGTERM stops them all, and one replica exiting stops the others.
#
# vLLM goes in its own environment, never in this project's requirements (its torch and transformers pins
# differ from ours); the `audio` extra brings what its transcription endpoint needs:
#   python3 -m venv /opt/vllm && /opt/vllm/bin/pip install 'vllm[audio]'
#   scripts/serve_vllm.sh --vllm /opt/vllm/bin/vllm
set -euo pipefail

readonly DEFAULT_MODEL=mistralai/Voxtral-Mini-3B-2507

usage() {
    cat <<EOF
usage: $0 [options] [-- extra vllm serve arguments]

  --model ID                  model to serve (default $DEFAULT_MODEL)
  --host ADDR                 address every replica listens on (default 127.0.0.1; 0.0.0.0 for other machines)
  --port P                    first replica's port; replica i listens on P+i (default 8000)
  --replicas N                independent servers to start (default 1)
  --tensor-parallel-size T    GPUs each replica spans (default 1)
  --gpus LIST|all             comma-separated GPU ids to use, T per replica in order (default 0..N*T-1);
                              all: leave CUDA_VISIBLE_DEVICES unset (one replica; vLLM or Ray place it)
  --vllm PATH                 the vllm executable (default: vllm on PATH)
  --dry-run                   print the commands and VOXTRAL_VLLM_URLS, start nothing
  -h, --help                  this text

Anything after -- is passed to every replica, e.g. -- --max-model-len 8192 --api-key KEY
or -- --pipeline-parallel-size 2 --distributed-executor-backend ray.
EOF
}

# fail MESSAGE: the message and the usage on stderr, exit status 2.
fail() {
    echo "serve_vllm.sh: $1" >&2
    echo >&2
    usage >&2
    exit 2
}

is_count() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

model=$DEFAULT_MODEL host=127.0.0.1 port=8000 replicas=1 tp=1 gpus="" vllm=vllm dry_run=false
extra=()
while (($# > 0)); do
    option=$1
    case $option in
        --dry-run) dry_run=true; shift; continue ;;
        -h | --help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        --*=*) value=${option#*=}; option=${option%%=*}; shift ;;
        --model | --host | --port | --replicas | --tensor-parallel-size | --gpus | --vllm)
            (($# >= 2)) || fail "$option needs a value"
            value=$2
            shift 2
            ;;
        *) fail "unknown option: $option" ;;
    esac
    case $option in
        --model) model=$value ;;
        --host) host=$value ;;
        --port) port=$value ;;
        --replicas) replicas=$value ;;
        --tensor-parallel-size) tp=$value ;;
        --gpus) gpus=$value ;;
        --vllm) vllm=$value ;;
        *) fail "unknown option: $option" ;;
    esac
done

[[ -n $model ]] || fail "--model is empty"
[[ -n $host ]] || fail "--host is empty"
is_count "$replicas" || fail "--replicas must be a whole number of at least 1, not '$replicas'"
is_count "$tp" || fail "--tensor-parallel-size must be a whole number of at least 1, not '$tp'"
if ! is_count "$port" || ((port > 65535)); then
    fail "--port must be a port number (1-65535), not '$port'"
fi
((port + replicas - 1 <= 65535)) || fail "--port $port with --replicas $replicas runs past port 65535"
for arg in "${extra[@]}"; do
    case $arg in
        --host | --host=* | --port | --port=* | --tensor-parallel-size | --tensor-parallel-size=* | -tp | -tp=*)
            fail "give ${arg%%=*} as this script's option, not after --" ;;
        *) ;;
    esac
done

needed=$((replicas * tp))
gpu_ids=()
if [[ $gpus == all ]]; then
    ((replicas == 1)) || fail "--gpus all runs one replica; list the GPUs for --replicas $replicas"
elif [[ -z $gpus ]]; then
    for ((i = 0; i < needed; i++)); do gpu_ids+=("$i"); done
else
    [[ $gpus =~ ^[0-9]+(,[0-9]+)*$ ]] || fail "--gpus must be comma-separated GPU ids such as 0,1 (or all), not '$gpus'"
    IFS=, read -r -a gpu_ids <<<"$gpus"
    declare -A seen=()
    for id in "${gpu_ids[@]}"; do
        [[ -z ${seen[$id]:-} ]] || fail "--gpus lists GPU $id twice"
        seen[$id]=1
    done
    ((${#gpu_ids[@]} >= needed)) \
        || fail "too few GPUs: --replicas $replicas x --tensor-parallel-size $tp needs $needed, --gpus lists ${#gpu_ids[@]} ($gpus)"
    if ((${#gpu_ids[@]} > needed)); then
        echo "serve_vllm.sh: using the first $needed of the GPUs listed ($gpus)" >&2
    fi
fi

# The URL another machine (or this server) reaches replica i at.
url_host=$host
if [[ $host == 0.0.0.0 || $host == :: ]]; then
    url_host=${HOSTNAME:-$(uname -n)}
fi
[[ $url_host == *:* ]] && url_host="[$url_host]"

# replica_args I: replica I's vllm command line, into the array `args`.
replica_args() {
    args=("$vllm" serve "$model" --tokenizer_mode mistral --config_format mistral --load_format mistral
        --host "$host" --port "$((port + $1))")
    if ((tp > 1)); then args+=(--tensor-parallel-size "$tp"); fi
    args+=("${extra[@]}")
}

commands=() devices=() urls=()
for ((i = 0; i < replicas; i++)); do
    replica_args "$i"
    line=$(printf '%q ' "${args[@]}")
    line=${line% }
    device=""
    if [[ $gpus != all ]]; then
        device=$(IFS=,; echo "${gpu_ids[*]:i*tp:tp}")
        line="CUDA_VISIBLE_DEVICES=$device $line"
    fi
    commands+=("$line")
    devices+=("$device")
    urls+=("http://$url_host:$((port + i))")
done

printf '%s\n' "${commands[@]}"
echo "VOXTRAL_VLLM_URLS=$(IFS=,; echo "${urls[*]}")"
for arg in "${extra[@]}"; do
    if [[ $arg == --api-key || $arg == --api-key=* ]]; then
        echo "serve_vllm.sh: set VOXTRAL_VLLM_API_KEY to the key given to --api-key" >&2
    fi
done
$dry_run && exit 0

if [[ $vllm == */* ]]; then
    [[ -x $vllm ]] || { echo "serve_vllm.sh: --vllm $vllm is not an executable file" >&2; exit 2; }
elif ! command -v "$vllm" >/dev/null 2>&1; then
    echo "serve_vllm.sh: '$vllm' is not on PATH. Install vLLM in its own environment and name it with --vllm:" >&2
    echo "  python3 -m venv /opt/vllm && /opt/vllm/bin/pip install 'vllm[audio]'" >&2
    echo "  $0 --vllm /opt/vllm/bin/vllm ..." >&2
    exit 2
fi

# run_replica I: replica I's command, with its GPUs.
run_replica() {
    local i=$1
    replica_args "$i"
    if [[ $gpus == all ]]; then
        exec "${args[@]}"
    fi
    CUDA_VISIBLE_DEVICES=${devices[i]} exec "${args[@]}"
}

if ((replicas == 1)); then
    run_replica 0
fi

pids=()
stop_all() {
    trap - INT TERM
    echo "serve_vllm.sh: stopping ${#pids[@]} replicas" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
for ((i = 0; i < replicas; i++)); do
    (run_replica "$i") &
    pids+=("$!")
done
status=0
wait -n "${pids[@]}" || status=$?
echo "serve_vllm.sh: a replica exited (status $status)" >&2
stop_all
exit "$status"
