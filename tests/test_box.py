"""The box: systemd units, installer, backup/restore, retention, model update and roll-back."""
from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from device.model.bundle import load_bundle, pack
from device.config import AppConfig, load_config
from testkit.appliance import Appliance
from testkit import REPO
from testkit.web import csrf_of, signed_in

UNITS = ["leukoscope.service", "leukoscope-kiosk.service", "leukoscope-retention.service",
         "leukoscope-retention.timer"]
LEUKOSCOPE = Path(sys.executable).with_name("leukoscope")


def staged_unit(tmp_path, name):
    """The unit as the installer writes it, pointing at this machine's real leukoscope command."""
    text = (REPO / "systemd" / name).read_text().replace("/opt/leukoscope/venv/bin/leukoscope", str(LEUKOSCOPE))
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", UNITS)
def test_units_verify_clean(tmp_path, name):
    assert LEUKOSCOPE.exists()
    for other in UNITS:  # the timer refers to its service
        staged_unit(tmp_path, other)
    out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_service_hardening_score(tmp_path):
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", str(staged_unit(tmp_path, "leukoscope.service"))],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for leukoscope\.service: ([0-9.]+)", out.stdout)
    assert m, out.stdout[-2000:] + out.stderr
    score = float(m.group(1))
    print(f"systemd-analyze security score: {score}")
    assert score <= 2.0
    unit = (REPO / "systemd/leukoscope.service").read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=leukoscope",
                "WorkingDirectory=/var/lib/leukoscope",
                "DeviceAllow=char-video4linux", "DeviceAllow=char-media", "DeviceAllow=char-dma_heap",
                "SystemCallFilter=", "ProtectSystem=strict", "NoNewPrivileges=yes"):
        assert key in unit, key


def run_installer(*args):
    import os

    return subprocess.run(["bash", str(REPO / "systemd/install.sh"), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=dict(os.environ, PYTHON=sys.executable))


def test_installer_dry_run_prints_every_step_and_changes_nothing():
    before = Path("/etc/leukoscope").exists(), Path("/opt/leukoscope").exists()
    out = run_installer("--dry-run")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert text.index("apt-get update") < text.index("apt-get install")  # a fresh image knows no packages yet
    for needle in ("apt-get install", "python3-picamera2", "python3-lgpio", "useradd --system",
                   "venv --system-site-packages", "/etc/xdg/autostart/leukoscope-kiosk.desktop",
                   "pip install --quiet --upgrade " + str(REPO) + "[device]", "config defaults > /etc/leukoscope/config.toml",
                   "/etc/systemd/system/leukoscope.service", "systemctl enable --now leukoscope.service",
                   "systemctl --global enable leukoscope-kiosk.service"):
        assert needle in text, needle
    assert (Path("/etc/leukoscope").exists(), Path("/opt/leukoscope").exists()) == before


def test_installer_staged_is_idempotent_and_uninstalls(tmp_path):
    root = tmp_path / "root"
    first = run_installer("--root", str(root), "--prefix", "/opt/lk")
    assert first.returncode == 0, first.stderr
    cfg_path = root / "etc/leukoscope/config.toml"
    assert load_config(cfg_path) == AppConfig()  # commented defaults: no effect until edited
    uncommented = "\n".join(line[2:] if line.startswith("# ") and "=" in line or line.startswith("# [[")
                            or line.startswith("#     ") or line.startswith("# ]") else line
                            for line in cfg_path.read_text().splitlines())
    assert load_config_text(uncommented, tmp_path) == AppConfig()  # and every default is written right
    unit = (root / "etc/systemd/system/leukoscope.service").read_text()
    assert "ExecStart=/opt/lk/venv/bin/leukoscope serve" in unit
    assert (root / "etc/systemd/user/leukoscope-kiosk.service").exists()
    cfg_path.write_text(cfg_path.read_text().replace('# clinic_name = "Leukoscope"', 'clinic_name = "Kisumu"'))
    second = run_installer("--root", str(root), "--prefix", "/opt/lk")
    assert second.returncode == 0 and "exists: kept as it is" in second.stdout
    assert load_config(cfg_path).web.clinic_name == "Kisumu"
    out = run_installer("--root", str(root), "--prefix", "/opt/lk", "--uninstall")
    assert out.returncode == 0
    assert not (root / "etc/systemd/system/leukoscope.service").exists() and cfg_path.exists()
    out = run_installer("--root", str(root), "--prefix", "/opt/lk", "--uninstall", "--purge")
    assert out.returncode == 0 and not cfg_path.exists()


def load_config_text(text, tmp_path):
    p = tmp_path / "uncommented.toml"
    p.write_text(text)
    return load_config(p)


# -- against a running daemon ---------------------------------------------------

def Daemon(tmp_path, data_dir):
    """A real appliance process on 127.0.0.1 (replay camera) over ``data_dir``."""
    return Appliance(tmp_path, data_dir=data_dir)


def new_sample(s, base, code):
    page = s.get(base + "/")
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(page.text), "sample_code": code})
    return int(r.url.rstrip("/").split("/")[-1]), csrf_of(r.text)


def test_backup_mid_capture_restores_every_record_and_image(tmp_path):
    d = Daemon(tmp_path, tmp_path / "data")
    try:
        s = signed_in(d.base)
        sid, token = new_sample(s, d.base, "B-1")
        stop = threading.Event()
        done = []

        def capture_forever():
            while not stop.is_set():
                r = s.post(f"{d.base}/samples/{sid}/capture", headers={"X-CSRFToken": token, "Accept": "application/json"})
                done.append(r.status_code)

        worker = threading.Thread(target=capture_forever)
        worker.start()
        while len(done) < 5:
            time.sleep(0.05)
        out = subprocess.run([sys.executable, "-m", "device.cli", "backup", str(tmp_path / "bk"), "--data-dir",
                              str(tmp_path / "data")], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        while len(done) < 10:  # captures went on during and after the backup
            time.sleep(0.05)
        stop.set()
        worker.join(30)
        assert set(done) == {200}
    finally:
        d.stop()
    manifest = json.loads((tmp_path / "bk/leukoscope-backup.json").read_text())
    assert manifest["missing"] == [] and manifest["counts"]["fields"] >= 5
    out = subprocess.run([sys.executable, "-m", "device.cli", "restore", str(tmp_path / "bk"), "--data-dir",
                          str(tmp_path / "restored")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    conn = sqlite3.connect(tmp_path / "restored/leukoscope.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("samples", "fields", "cells")}
    assert counts == {k: manifest["counts"][k] for k in counts}
    original = tmp_path / "data"
    for (rel,) in conn.execute("SELECT image_path FROM fields UNION SELECT crop_path FROM cells"):
        assert (tmp_path / "restored" / rel).read_bytes() == (original / rel).read_bytes()
    # the restored records serve again, with the same administrator
    d2 = Daemon(tmp_path, tmp_path / "restored")
    try:
        s2 = signed_in(d2.base, create=False)
        assert "B-1" in s2.get(d2.base + "/history").text
    finally:
        d2.stop()
    # restoring over existing records needs --force
    out = subprocess.run([sys.executable, "-m", "device.cli", "restore", str(tmp_path / "bk"), "--data-dir",
                          str(tmp_path / "restored")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--force" in out.stderr


def test_retention_deletes_old_records_with_audit(tmp_path):
    from device.records import samples as records
    from device.records.store import Store

    store = Store(tmp_path)
    old = records.create_sample(store, "OLD", "t")
    new = records.create_sample(store, "NEW", "t")
    with store.transaction() as tx:
        tx.execute("UPDATE samples SET created_at = '2020-01-01T00:00:00+00:00' WHERE id = ?", (old,))
    args = [sys.executable, "-m", "device.cli", "retention", "--data-dir", str(tmp_path)]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "retention is off" in out.stdout  # off by default
    out = subprocess.run(args + ["--days", "365"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "deleted 1 sample" in out.stdout, out.stderr
    ids = [r[0] for r in store.connect().execute("SELECT id FROM samples")]
    assert ids == [new]
    audit = store.connect().execute("SELECT username, detail FROM audit WHERE action = 'delete-sample'").fetchall()
    assert len(audit) == 1 and audit[0][0] == "retention" and "365-day retention" in audit[0][1]


def test_model_update_and_rollback_against_a_running_daemon(tmp_path):
    default = load_bundle()
    with zipfile.ZipFile(default.path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(files["metadata.json"])
    meta["version"] = "9.9-test"
    newer_name = f"{meta['name']} 9.9-test"
    files["metadata.json"] = json.dumps(meta).encode()
    newer = tmp_path / "newer.lkb"
    newer.write_bytes(pack(files))
    bad = tmp_path / "bad.lkb"
    bad.write_bytes(newer.read_bytes()[:5000])

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "device.cli", "model", *args, "--data-dir", str(tmp_path / "data")],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    def wait_model(name, timeout=8.0):
        t0 = time.monotonic()
        while d.health()["model"] != name:
            assert time.monotonic() - t0 < timeout, d.health()
            time.sleep(0.1)

    d = Daemon(tmp_path, tmp_path / "data")
    try:
        assert d.health()["model"] == default.name
        assert cli("install", str(newer)).returncode == 0
        wait_model(newer_name)
        models = tmp_path / "data" / "models"
        before = models_state(models)
        out = cli("install", str(bad))
        assert out.returncode == 2 and "truncated or corrupt" in out.stderr
        if models_state(models) != before:
            # something reached the models folder: wait until the daemon has looked at it and refused it
            # (it looks every 2 s; before: a fixed 2.5 s sleep, paid even when nothing had changed)
            t0 = time.monotonic()
            while not refusals(tmp_path / "data"):
                assert time.monotonic() - t0 < 10, f"the daemon never judged the changed models folder: {models_state(models)}"
                time.sleep(0.1)
        # else the folder the daemon reads is as it was, byte for byte: there is nothing it could switch to
        assert d.health()["model"] == newer_name  # the last good one stays
        assert cli("install", str(REPO / "device/assets/models/default.lkb")).returncode == 0
        wait_model(default.name)
        out = cli("rollback")
        assert out.returncode == 0 and "9.9-test" in out.stdout
        wait_model(newer_name)
    finally:
        d.stop()


def models_state(models: Path) -> dict:
    """Every file the daemon could load a model from, with its size and modification time."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(models.iterdir())} if models.exists() else {}


def refusals(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{data_dir / 'leukoscope.db'}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute("SELECT COUNT(*) FROM audit WHERE action = 'model-refused'").fetchone()[0]
    finally:
        conn.close()


def _ini(path):
    """systemd unit / desktop entry: {section: {key: [values]}} (keys may repeat)."""
    out, section = {}, None
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def test_kiosk_autostart_units_and_installer_agree(tmp_path):
    """Staged as the installer writes them: the desktop's autostart starts the user unit the installer
    put where the user manager looks, with the display imported first; the unit runs the installed
    program at the address the service serves; the service runs as the user the installer creates,
    in the groups it adds it to, working in its own state directory."""
    import shlex

    from device.config import AppConfig

    root = tmp_path / "root"
    out = run_installer("--root", str(root), "--prefix", "/opt/lk")
    assert out.returncode == 0, out.stderr
    installer = (REPO / "systemd/install.sh").read_text()

    desktop = _ini(root / "etc/xdg/autostart/leukoscope-kiosk.desktop")["Desktop Entry"]
    assert desktop["Type"] == ["Application"]
    argv = shlex.split(desktop["Exec"][0])
    assert argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3
    steps = [shlex.split(part) for part in argv[2].split(";")]
    assert steps[0][:3] == ["systemctl", "--user", "import-environment"]
    assert {"WAYLAND_DISPLAY", "DISPLAY"} <= set(steps[0][3:])
    assert steps[1] == ["exec", "systemctl", "--user", "start", "leukoscope-kiosk.service"]
    # the shell line itself parses and the unit name it starts is the one installed as a user unit
    assert subprocess.run(["sh", "-n", "-c", argv[2]]).returncode == 0
    kiosk_path = root / "etc/systemd/user" / steps[1][-1]
    kiosk = _ini(kiosk_path)
    assert "PartOf" not in kiosk["Unit"]  # graphical-session.target never starts on Raspberry Pi OS
    assert kiosk["Service"]["Restart"] == ["always"]  # the browser comes back
    kargv = shlex.split(kiosk["Service"]["ExecStart"][0])
    assert kargv[:2] == ["/opt/lk/venv/bin/leukoscope", "kiosk"]
    url = kargv[kargv.index("--url") + 1]
    cfg = AppConfig()
    assert url == f"http://{cfg.server.host}:{cfg.server.port}/"

    service = _ini(root / "etc/systemd/system/leukoscope.service")["Service"]
    assert service["ExecStart"][0].split()[:2] == ["/opt/lk/venv/bin/leukoscope", "serve"]
    assert "--config /etc/leukoscope/config.toml" in service["ExecStart"][0]
    assert (root / "etc/leukoscope/config.toml").exists()
    assert service["User"] == ["leukoscope"] and service["Group"] == ["leukoscope"]
    m = re.search(r"useradd --system --home-dir (\S+) .* (\w+)\n", installer)
    assert m and m.group(2) == service["User"][0] and m.group(1) == "/var/lib/" + service["StateDirectory"][0]
    groups = service["SupplementaryGroups"][0].split()
    m = re.search(r"for g in ([a-z ]+); do", installer)
    assert m and m.group(1).split() == groups
    assert service["WorkingDirectory"] == ["/var/lib/" + service["StateDirectory"][0]]  # writable: lgpio's pipes
    for u in ("leukoscope.service", "leukoscope-retention.service"):
        text = (root / "etc/systemd/system" / u).read_text()
        assert "/opt/leukoscope" not in text  # the prefix was written everywhere
    # the staged user unit verifies as a unit with the staged program path swapped for this machine's
    staged = tmp_path / "leukoscope-kiosk.service"
    staged.write_text(kiosk_path.read_text().replace("/opt/lk/venv/bin/leukoscope", str(LEUKOSCOPE)))
    v = subprocess.run(["systemd-analyze", "verify", str(staged)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr
    out = run_installer("--root", str(root), "--prefix", "/opt/lk", "--uninstall")
    assert out.returncode == 0 and not (root / "etc/xdg/autostart/leukoscope-kiosk.desktop").exists()


def test_lgpio_needs_the_units_writable_working_directory(tmp_path):
    """gpiozero's pins on Bookworm come from lgpio, whose import makes a notification FIFO in the
    current directory. Under ProtectSystem=strict "/" is a read-only bind mount: there the import (and
    so the push-button) fails; in the unit's WorkingDirectory, the writable state directory, it works."""
    import os
    import shutil

    import importlib.util

    # not imported here: importing lgpio leaves its FIFO in the current directory
    if importlib.util.find_spec("lgpio") is None:
        pytest.skip("lgpio is not installed (the dev extra has it on Linux, Python 3.11)")
    probe = [sys.executable, "-c", "import lgpio"]
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    if os.geteuid() == 0 and shutil.which("unshare"):
        # what ProtectSystem=strict does to "/": a read-only bind mount, read-only even for root
        ro = subprocess.run(["unshare", "--mount", "sh", "-c", 'd=$1; shift; mount --bind "$d" "$d" && '
                             'mount -o remount,bind,ro "$d" && cd "$d" && exec "$@"', "sh", str(readonly), *probe], capture_output=True, text=True,
                            timeout=60)
        if "mount" in ro.stderr and "lgd-nfy" not in ro.stderr:
            pytest.skip(f"cannot make a read-only bind mount here: {ro.stderr.strip()[-200:]}")
    elif os.geteuid() != 0:
        ro = subprocess.run(probe, cwd="/", capture_output=True, text=True, timeout=60)  # "/" is not ours to write
    else:
        pytest.skip("no unshare(1) to make a read-only directory for root")
    assert ro.returncode != 0 and ".lgd-nfy" in ro.stderr, ro.stderr
    state = tmp_path / "state"  # the StateDirectory= the unit works in
    state.mkdir()
    ok = subprocess.run(probe, cwd=state, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert [p.name for p in state.iterdir() if p.name.startswith(".lgd-nfy")]  # the FIFO lgpio made
    unit = _ini(REPO / "systemd/leukoscope.service")["Service"]
    assert unit["WorkingDirectory"] == ["/var/lib/" + unit["StateDirectory"][0]]
    assert "ProtectSystem=strict" in (REPO / "systemd/leukoscope.service").read_text()


def test_installer_camera_detection_agrees_with_the_cli_and_config(tmp_path):
    """`leukoscope cameras --picamera2` (what install.sh asks) answers from picamera2's camera list,
    and the line install.sh rewrites is the one `config defaults` writes."""
    import os

    fake = tmp_path / "pkgs" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "class Picamera2:\n"
        "    @staticmethod\n"
        "    def global_camera_info():\n"
        "        return [{'Model': 'imx477', 'Num': 0}]\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'pkgs'}:{REPO}")
    out = subprocess.run([sys.executable, "-m", "device.cli", "cameras", "--picamera2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "imx477", out.stderr
    (fake / "__init__.py").write_text("raise ValueError('numpy.dtype size changed')\n")
    out = subprocess.run([sys.executable, "-m", "device.cli", "cameras", "--picamera2"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "numpy.dtype size changed" in out.stderr
    installer = (REPO / "systemd/install.sh").read_text()
    m = re.search(r'sed -i "s\|\^(.+?)\|(.+?)\|" "\$ETC/config.toml"', installer)
    assert m, "the installer's config edit moved"
    old, new = m.group(1).replace('\\"', '"'), m.group(2).replace('\\"', '"').replace("$CAMS", "imx477")
    from device.config import commented_defaults

    text = commented_defaults()
    assert text.count(old + "\n") == 1
    cfg_path = tmp_path / "config.toml"
    cfg_path.write_text(text.replace(old + "\n", new + "\n"))
    assert load_config(cfg_path).camera.backend == "picamera2"
