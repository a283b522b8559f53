#!/usr/bin/env bash
# Set up the virtual environment (first run only), then start the server.
# Configuration comes from VOXTRAL_* environment variables or .env (see .env.example).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup_venv.sh requirements.txt
exec .venv/bin/python -m voxtral_local "$@"
