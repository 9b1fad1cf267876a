"""A real Orthanc for tests and benches: its own process, a configuration in a temporary folder, authentication
on, the DICOMweb plugin loaded, free loopback ports (never the system service); and a loopback TCP proxy that
can cut the link or drop connections mid-request."""
from __future__ import annotations

import json
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import requests

from testkit import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        p = Path(d) / "libOrthancDicomWeb.so"
        if p.exists():
            return p
    return None


def unavailable() -> str | None:
    """Why no Orthanc can run here (None: it can)."""
    if not Path(ORTHANC).exists():
        return "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; scripts/test.sh does it)"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


class Orthanc:
    """``users``: name -> password. ``start()`` / ``stop()`` keep the same storage and port (a district outage)."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, port: int | None = None,
                 extra: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = users or {"box": "box-password", "expert": "expert-password"}
        self.port = port or free_port()
        self.config = self.workdir / "orthanc.json"
        cfg = {"Name": "leukoscope-test", "StorageDirectory": str(self.workdir / "storage"),
               "IndexDirectory": str(self.workdir / "index"), "HttpPort": self.port, "DicomPort": free_port(),
               "DicomServerEnabled": False, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
               "RegisteredUsers": self.users, "Plugins": [str(dicomweb_plugin())],
               "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
               "HttpTimeout": 30, "StableAge": 1, "ConcurrentJobs": 1, "HttpThreadsCount": 8}
        cfg.update(extra or {})
        self.config.write_text(json.dumps(cfg, indent=1))
        self.proc: subprocess.Popen | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.dicomweb = self.base + "/dicom-web"

    @property
    def auth(self) -> tuple[str, str]:
        name = next(iter(self.users))
        return name, self.users[name]

    def start(self, wait: float = 30) -> "Orthanc":
        log = open(self.workdir / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.workdir)
        t0 = time.monotonic()
        while True:
            try:
                if requests.get(self.base + "/system", auth=self.auth, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > wait:
                tail = (self.workdir / "orthanc.log").read_text(errors="replace")[-2000:]
                self.kill()  # never left running behind a failed start
                raise RuntimeError(f"Orthanc did not start within {wait} s: {tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.proc = None

    def rest(self, path: str, **kw):
        r = requests.get(self.base + path, auth=self.auth, timeout=30, **kw)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body) -> dict:
        r = requests.post(self.base + path, auth=self.auth, timeout=60, json=body)
        r.raise_for_status()
        return r.json()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class FlakyProxy:
    """A loopback TCP proxy to ``target_port``. ``cut = True``: new connections are closed at once; ``drop``:
    the probability that a connection is closed after part of its request went through (mid-request)."""

    def __init__(self, target_port: int, drop: float = 0.0, seed: int = 0):
        self.target = target_port
        self.drop = drop
        self.cut = False
        self.rng = random.Random(seed)
        self.drops = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=30)
        except OSError:
            client.close()
            return
        budget = self.rng.randint(200, 60_000) if self.rng.random() < self.drop else None

        def pipe(src, dst, limited):
            nonlocal budget
            try:
                while True:
                    data = src.recv(16384)
                    if not data:
                        break
                    if limited and budget is not None:
                        if len(data) >= budget:
                            dst.sendall(data[:budget])
                            self.drops += 1
                            raise ConnectionAbortedError("dropped mid-request")
                        budget -= len(data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pipe, args=(upstream, client, False), daemon=True)
        t.start()
        pipe(client, upstream, True)
        t.join(30)
        client.close()
        upstream.close()

    def close(self):
        self._closing = True
        self.sock.close()
