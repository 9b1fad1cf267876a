#!/usr/bin/env bash
# Install Leukoscope on Raspberry Pi OS Bookworm (Python 3.11) or Trixie (Python 3.13).
#
#   sudo systemd/install.sh                 install or update (idempotent)
#   sudo systemd/install.sh --dry-run       print every step, change nothing
#   sudo systemd/install.sh --uninstall     remove the program and units; keep records and config
#   sudo systemd/install.sh --uninstall --purge   ... and the records, config and the system user
#   systemd/install.sh --root DIR           write the files under DIR only (no apt, users or systemctl)
#   systemd/install.sh --venv-only          only build the program's venv (the aarch64 test uses this)
#   systemd/install.sh --list-packages      print the apt packages it would install here, and stop
#
# Options: --prefix DIR (default /opt/leukoscope), --no-kiosk.
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/leukoscope
ROOT=""
DRY=0
UNINSTALL=0
PURGE=0
KIOSK=1
VENV_ONLY=0
LIST_PACKAGES=0
while (($#)); do
    case "$1" in
        --dry-run) DRY=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --no-kiosk) KIOSK=0 ;;
        --venv-only) VENV_ONLY=1 ;;
        --list-packages) LIST_PACKAGES=1 ;;
        --prefix) PREFIX=$2; shift ;;
        --root) ROOT=$(realpath -m "$2"); shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

VENV=$PREFIX/venv
ETC=$ROOT/etc/leukoscope
UNITS=$ROOT/etc/systemd/system
USER_UNITS=$ROOT/etc/systemd/user
AUTOSTART=$ROOT/etc/xdg/autostart
SYSTEM_UNITS=(leukoscope.service leukoscope-retention.service leukoscope-retention.timer)

step() { printf '\n== %s\n' "$*"; }
run() {
    printf '+ %s\n' "$*"
    ((DRY)) || "$@"
}
host() {  # steps that change the host itself: skipped when staging under --root
    if [ -n "$ROOT" ]; then printf '+ (skipped under --root) %s\n' "$*"; else run "$@"; fi
}

if ((UNINSTALL)); then
    step "stopping and removing the units"
    host systemctl disable --now "${SYSTEM_UNITS[@]}" || true
    host systemctl --global disable leukoscope-kiosk.service || true
    for u in "${SYSTEM_UNITS[@]}"; do run rm -f "$UNITS/$u"; done
    run rm -f "$USER_UNITS/leukoscope-kiosk.service" "$AUTOSTART/leukoscope-kiosk.desktop"
    host systemctl daemon-reload
    step "removing the program"
    run rm -rf "$ROOT$PREFIX"
    if ((PURGE)); then
        step "purging records, configuration and the system user"
        run rm -rf "$ETC" "$ROOT/var/lib/leukoscope"
        if id leukoscope >/dev/null 2>&1; then host userdel leukoscope; fi
    else
        echo "kept: $ETC (configuration) and /var/lib/leukoscope (records); --purge removes them"
    fi
    exit 0
fi

# The program's venv. --system-site-packages makes apt's picamera2 (and lgpio) visible; apt's C
# extensions (picamera2's simplejpeg) are built against apt's numpy, so the venv's numpy must keep
# that major version: numpy 2 over Bookworm's 1.24 makes `import picamera2` fail.
build_venv() {
    local cons="$PREFIX/constraints.txt" apt_numpy
    apt_numpy=$("$PY" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
    if [ -x "$ROOT$VENV/bin/python" ]; then
        echo "venv $VENV exists: updating"
    else
        run mkdir -p "$ROOT$PREFIX"
        host "$PY" -m venv --system-site-packages "$VENV"
    fi
    if [ -n "$apt_numpy" ]; then
        local major=${apt_numpy%%.*}
        echo "apt's numpy is $apt_numpy: the venv keeps numpy $major.x"
        printf '+ numpy>=%s,<%s > %s\n' "$major" "$((major + 1))" "$cons"
        if ((!DRY)) && [ -z "$ROOT" ]; then echo "numpy>=$major,<$((major + 1))" > "$cons"; fi
        export PIP_CONSTRAINT=$cons
    fi
    host "$VENV/bin/python" -m pip install --quiet --upgrade pip
    host "$VENV/bin/python" -m pip install --quiet --upgrade "$SRC[device]"
    if ((!DRY)) && [ -z "$ROOT" ]; then check_venv; fi
}

check_venv() {  # what apt provides must still import inside the venv
    local mod
    for mod in picamera2 lgpio; do
        if "$PY" -c "import $mod" >/dev/null 2>&1; then
            if "$VENV/bin/python" -c "import $mod" >/dev/null 2>&1; then
                echo "apt's $mod imports in the venv"
            else
                echo "install.sh: apt's $mod imports with $PY but not in $VENV:" >&2
                "$VENV/bin/python" -c "import $mod" 2>&1 | tail -3 >&2
                exit 1
            fi
        fi
    done
}

apt_has() {  # a package apt can install here (a real candidate, not only a name it has heard of)
    apt-cache policy "$1" 2>/dev/null | grep -q 'Candidate: [^(]'
}

step "checking the system"
# Debian's own python3: apt's picamera2, lgpio and numpy live in its dist-packages
PY=/usr/bin/python3
[ -x "$PY" ] || PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "python3 not found" >&2; exit 1; }
PYV=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 needed, found $PYV" >&2; exit 1; }
CODENAME=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-unknown}")
echo "python $PYV, release $CODENAME, source $SRC, prefix $PREFIX${ROOT:+, staged under $ROOT}"

if ((VENV_ONLY)); then
    step "program (venv with --system-site-packages, so apt's picamera2 is visible)"
    build_venv
    exit 0
fi

choose_packages() {
    PKGS=(python3-venv python3-pip)
    # From Raspberry Pi OS's archive (absent on plain Debian, which is fine with a USB or replay camera):
    # picamera2 for the Pi camera, lgpio for gpiozero's push-button on Bookworm and the Pi 5.
    for p in python3-picamera2 python3-lgpio; do
        if apt_has "$p" || ((DRY)); then PKGS+=("$p"); else echo "not available here: $p"; fi
    done
    if ((KIOSK)); then
        # Raspberry Pi OS Bookworm calls it chromium-browser; Trixie and Debian call it chromium.
        if apt_has chromium-browser; then PKGS+=(chromium-browser); else PKGS+=(chromium); fi
    fi
}

if ((LIST_PACKAGES)); then  # from apt's current lists, as they are
    choose_packages
    echo "packages: ${PKGS[*]}"
    exit 0
fi

step "system packages"
# The package lists first: on a fresh image apt knows no package versions until it has run.
host apt-get update -qq
choose_packages
host env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PKGS[@]}"

step "system user"
if id leukoscope >/dev/null 2>&1; then
    echo "user leukoscope exists"
else
    host useradd --system --home-dir /var/lib/leukoscope --no-create-home --shell /usr/sbin/nologin leukoscope
fi
for g in video render gpio; do
    if getent group "$g" >/dev/null; then host usermod -a -G "$g" leukoscope; fi
done

step "program (venv with --system-site-packages, so apt's picamera2 is visible)"
build_venv

step "configuration"
run mkdir -p "$ETC"
if [ -e "$ETC/config.toml" ]; then
    echo "$ETC/config.toml exists: kept as it is"
else
    # staged: the project's own interpreter ($PYTHON) writes it, since no venv was built
    if [ -n "$ROOT" ]; then GEN=("${PYTHON:-$PY}" -m device.cli config defaults); else GEN=("$VENV/bin/leukoscope" config defaults); fi
    printf '+ %s > %s\n' "${GEN[*]}" "$ETC/config.toml"
    if ((!DRY)); then
        if ! (cd "$SRC" && "${GEN[@]}") > "$ETC/config.toml.tmp"; then
            rm -f "$ETC/config.toml.tmp"
            echo "install.sh: could not write the configuration" >&2
            exit 1
        fi
        chmod 0644 "$ETC/config.toml.tmp"
        mv "$ETC/config.toml.tmp" "$ETC/config.toml"
        NEW_CONFIG=1
    fi
fi

step "camera"
if [ -n "$ROOT" ] || ((DRY)); then
    echo "+ (skipped: staged or dry run) $VENV/bin/leukoscope cameras"
else
    if CAMS=$("$VENV/bin/leukoscope" cameras --picamera2); then
        echo "Pi camera found: $CAMS"
        if ((${NEW_CONFIG:-0})); then
            sed -i "s|^# backend = \"replay\"|backend = \"picamera2\"  # set by install.sh: found $CAMS|" "$ETC/config.toml"
            echo "$ETC/config.toml: [camera] backend = \"picamera2\""
        elif ! grep -q '^backend = "picamera2"' "$ETC/config.toml"; then
            echo "note: $ETC/config.toml does not use it; set [camera] backend = \"picamera2\" (or on the Settings page)"
        fi
    else
        echo "no Pi camera found (libcamera lists none): the configured camera stays in use"
    fi
fi

step "systemd units"
run mkdir -p "$UNITS" "$USER_UNITS"
install_unit() {  # source, destination: the prefix is written into ExecStart
    printf '+ install %s -> %s\n' "$1" "$2"
    ((DRY)) && return 0
    sed "s#/opt/leukoscope#$PREFIX#g" "$1" > "$2.tmp"
    chmod 0644 "$2.tmp"
    mv "$2.tmp" "$2"
}
for u in "${SYSTEM_UNITS[@]}"; do install_unit "$SRC/systemd/$u" "$UNITS/$u"; done
if ((KIOSK)); then
    run mkdir -p "$AUTOSTART"
    install_unit "$SRC/systemd/leukoscope-kiosk.service" "$USER_UNITS/leukoscope-kiosk.service"
    install_unit "$SRC/systemd/leukoscope-kiosk.desktop" "$AUTOSTART/leukoscope-kiosk.desktop"
fi
host systemctl daemon-reload
host systemctl enable --now leukoscope.service leukoscope-retention.timer
if ((KIOSK)); then host systemctl --global enable leukoscope-kiosk.service; fi
host systemctl restart leukoscope.service

step "done"
echo "Leukoscope runs as the 'leukoscope' service on http://127.0.0.1:8080/ (records in /var/lib/leukoscope)."
echo "Open the page and create the administrator. Logs: journalctl -u leukoscope"
if ((KIOSK)); then echo "The kiosk opens at the next desktop login (reboot with desktop autologin on)."; fi
