#!/usr/bin/env bash
# Set up the virtual environment (first run only), then start the server: `./start_server.sh [serve options]`,
# for example `./start_server.sh --port 9000`; `./start_server.sh --help` lists them.
# Configuration also comes from VOXTRAL_* environment variables or .env (see .env.example); options win.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_venv.sh requirements.txt
exec .venv/bin/python -m voxtral_local serve "$@"
