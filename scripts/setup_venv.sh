#!/usr/bin/env bash
# Create .venv (if missing), install the pinned requirements into it, and install the project itself
# (editable, for the `voxtral-local` command in .venv/bin).
# Usage: scripts/setup_venv.sh [requirements file, default requirements.txt]
# Offline once the requirements are there: nothing is fetched when every pin is already installed.
# The dev requirements' playwright package drives the system's Chromium in tests/test_web_page.py; this script
# never runs `playwright install` (no browser is downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req")"
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
  || [ ! -x .venv/bin/voxtral-local ]; then
  # --no-index succeeds only when every pin is installed already: then no network is needed
  if ! .venv/bin/python -m pip install --quiet --no-index -r "$req" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -r "$req"
  fi
  # the build's warnings only when it fails
  if ! out=$(.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1); then
    echo "$out" >&2
    exit 1
  fi
  touch "$stamp"
fi
