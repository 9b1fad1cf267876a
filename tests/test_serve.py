"""``leukoscope serve`` as a real process: READY over a real notify socket, health over HTTP, SIGTERM."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from testkit import REPO, free_port


def start_server(tmp_path, extra_env=None, config=None):
    port = free_port()
    env = dict(os.environ, **(extra_env or {}))
    args = [sys.executable, "-m", "device.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")]
    if config:
        args += ["--config", str(config)]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def wait_health(port, timeout=20.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not answer /health")


def test_serve_notifies_ready_answers_and_stops_on_sigterm(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(20)
    t0 = time.monotonic()
    proc, port = start_server(tmp_path, {"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "2000000"})
    try:
        msg = sock.recv(4096).decode()
        ready_s = time.monotonic() - t0
        assert msg.startswith("READY=1"), msg
        assert ready_s < 10, ready_s  # generous here; bench.pipeline measures the real figure
        health = wait_health(port)
        assert health["ok"] and health["camera"] == "ok"
        # watchdog pings arrive every WATCHDOG_USEC / 2
        assert sock.recv(4096).decode() == "WATCHDOG=1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.url.endswith("/setup")  # first start asks for the administrator
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        assert "Leukoscope ready on http://127.0.0.1:" in out
        sock.settimeout(0.5)
        rest = []
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_serve_binds_loopback_by_default(tmp_path):
    proc, port = start_server(tmp_path)
    try:
        wait_health(port)
        out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            local = [line.split()[3] for line in out.stdout.splitlines()]
            assert local == [f"127.0.0.1:{port}"], out.stdout
        else:  # no ss here: connecting over another local address must fail
            addrs = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
            for addr in addrs:
                with socket.socket() as s:
                    s.settimeout(1)
                    assert s.connect_ex((addr, port)) != 0
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[camera]\nbackend = 'webcam9000'\n")
    out = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--config", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "webcam9000" in out.stderr


def test_sigterm_with_idle_keep_alive_connections(tmp_path):
    """Open, idle keep-alive connections must not hold the process past systemd's stop timeout."""
    import requests

    for i in range(4):
        proc, port = start_server(tmp_path / str(i))
        try:
            wait_health(port)
            sessions = [requests.Session() for _ in range(3)]
            for s in sessions:
                assert s.get(f"http://127.0.0.1:{port}/health", timeout=5).ok  # connection stays open
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out
            assert time.monotonic() - t0 < 10, time.monotonic() - t0
            assert "stopped cleanly" in out
        finally:
            if proc.poll() is None:
                proc.kill()
