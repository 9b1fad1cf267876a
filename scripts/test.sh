#!/usr/bin/env bash
# Install what the tests need (system packages, a venv with every extra) and run the whole suite.
# Usage: scripts/test.sh [pytest arguments]
#   scripts/test.sh                  everything (what CI runs)
#   scripts/test.sh -m "not slow"    the quick loop: no bench, TensorFlow, browser, arm64 or district tests
#   LEUKOSCOPE_TEST_NO_INSTALL=1 scripts/test.sh ...   skip the installs and the arm64 build (.venv exists)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${LEUKOSCOPE_TEST_NO_INSTALL:-}" ]; then
    [ -x .venv/bin/python ] || { echo "LEUKOSCOPE_TEST_NO_INSTALL is set but there is no .venv: run scripts/test.sh once without it" >&2; exit 2; }
    exec .venv/bin/python -m pytest "$@"
fi

# System packages: Chromium for the browser tests, systemd-analyze for the unit checks, pdftoppm for the
# report, and for the arm64 smoke test (tests/test_aarch64.py) debootstrap plus qemu-user-static with its
# binfmt handler.
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)  # the browser test renders the PDF report to PNG
# the district (tests/test_district.py): a real Orthanc with its DICOMweb plugin, and dciodvfy to validate objects
{ [ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1; } || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
if [ "$(id -u)" -eq 0 ] && [ "$(uname -m)" != aarch64 ]; then
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    [ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
fi
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing system packages: ${need[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$(id -u)" -eq 0 ] && [ -x /usr/bin/qemu-aarch64-static ]; then
    # A container starts without binfmt_misc mounted; where it may not mount it, the test says so and skips.
    [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[train,device,district,dev]'

# The arm64 chroot, before the suite, so that its one-off build (about 10 minutes on 2 cores; cached in
# /var/cache/leukoscope-aarch64 afterwards) is not counted against a test's time-out. Bounded: if it
# cannot finish in 25 minutes the suite still runs and the test builds or reports it.
if .venv/bin/python scripts/aarch64_chroot.py check; then
    SECONDS=0
    timeout 1500 .venv/bin/python scripts/aarch64_chroot.py build || echo "arm64 chroot build failed or timed out"
    echo "arm64 chroot ready in ${SECONDS} s"
fi
exec .venv/bin/python -m pytest "$@"
