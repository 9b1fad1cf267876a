#!/usr/bin/env bash
# Start the appliance on its embedded default: replay camera over the bundled
# sample fields, the bundled model, http://127.0.0.1:8080.
# Usage: scripts/start.sh [leukoscope serve arguments: --port N, --host ADDR, --data-dir DIR, --config my.toml]
# The first run creates .venv and installs the device's packages (about half a minute); the
# installers' own output goes to .venv/install.log and is shown only when something fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
say() { printf 'start.sh: %s\n' "$*"; }
quietly() {  # run an installer step; its chatter (pip notices, setuptools banners) only if it fails
    if ! "$@" >>.venv/install.log 2>&1; then
        say "failed: $* -- the installer said:" >&2
        tail -n 30 .venv/install.log >&2
        exit 1
    fi
}
if [ ! -x .venv/bin/leukoscope ] || ! .venv/bin/python -c "import cv2, flask, waitress" 2>/dev/null; then
    if [ ! -x .venv/bin/python ]; then
        say "Creating the Python environment in $PWD/.venv (first run only) ..."
        "$PY" -m venv .venv
    fi
    : >.venv/install.log
    say "Installing Leukoscope and its packages into .venv (first run: about half a minute) ..."
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    quietly .venv/bin/python -m pip install -q --upgrade pip
    quietly .venv/bin/python -m pip install -q -e '.[device]'
fi
say "Starting Leukoscope (loading the model and the camera) ..."
exec .venv/bin/leukoscope serve "$@"
