"""A real `leukoscope serve` process for the load and soak benches (loopback only)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from testkit import REPO, free_port



class Appliance:
    """Starts ``leukoscope serve`` with the replay camera over a copy of the bundled fields and
    waits until /health answers. ``data_dir`` defaults to ``workdir/data``."""

    def __init__(self, workdir: Path, extra_config: str = "", data_dir: Path | None = None):
        self.port = free_port()
        fields = workdir / "fields"
        if not fields.exists():
            shutil.copytree(REPO / "device/assets/fields", fields)
        cfg = workdir / "config.toml"
        cfg.write_text(f'[camera]\nfolder = "{fields}"\n[sample]\ntarget_cells = 10000\n{extra_config}')
        self.data_dir = Path(data_dir) if data_dir else workdir / "data"
        self.proc = subprocess.Popen([sys.executable, "-m", "device.cli", "serve", "--config", str(cfg), "--port",
                                      str(self.port), "--data-dir", str(self.data_dir)], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        t0 = time.monotonic()
        try:
            while True:
                try:
                    urllib.request.urlopen(self.base + "/health", timeout=2).read()
                    return
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"the appliance exited with {self.proc.returncode} before answering") from None
                    if time.monotonic() - t0 > 60:
                        raise RuntimeError(f"the appliance did not answer /health on port {self.port} within 60 s") from None
                    time.sleep(0.05)
        except BaseException:  # a failed start, or the test's time-out here: never leave the process behind
            self.kill()
            raise

    def health(self) -> dict:
        import json

        with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
            return json.loads(r.read())

    def kill(self) -> None:
        """A power cut, as far as the process can tell."""
        self.proc.kill()
        self.proc.wait(30)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.data_dir.rglob("*") if p.is_file())

    def stop(self) -> int:
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()  # never left running behind a failed test
            raise AssertionError(f"the appliance on port {self.port} did not stop within 30 s of SIGTERM") from None


def open_sample(session, base: str, code: str) -> tuple[str, str]:
    from testkit.web import csrf_of

    page = session.get(base + "/")
    r = session.post(base + "/samples", data={"csrf_token": csrf_of(page.text), "sample_code": code})
    return r.url, csrf_of(r.text)
