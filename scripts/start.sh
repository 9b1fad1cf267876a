#!/usr/bin/env bash
# Start the appliance on its embedded default: replay camera over the bundled
# sample fields, the bundled model, http://127.0.0.1:8080.
# Usage: scripts/start.sh [leukoscope serve arguments, e.g. --config my.toml]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/leukoscope ] || ! .venv/bin/python -c "import cv2, flask, waitress" 2>/dev/null; then
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[device]'
fi
exec .venv/bin/leukoscope serve "$@"
