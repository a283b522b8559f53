#!/usr/bin/env bash
# Run the whole test suite (sets up .venv with the dev requirements first).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_venv.sh requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
