#!/usr/bin/env python3
"""An emulated Raspberry Pi OS base: a Debian Bookworm arm64 chroot run through qemu-user-static.

    sudo python3 scripts/aarch64_chroot.py check    # can this machine run it? (exit 1 and why, if not)
    sudo python3 scripts/aarch64_chroot.py build    # make or refresh the cached chroot, print timings
    sudo python3 scripts/aarch64_chroot.py run CMD  # run CMD inside, with this checkout at /src

Raspberry Pi OS Bookworm is Debian Bookworm arm64 plus Raspberry Pi's own archive (picamera2,
lgpio, the kernel); this is the Debian part, made by `debootstrap --arch=arm64` and run through
qemu-user-static's binfmt handler (all Debian packages). Inside, the installer's own venv recipe
(`systemd/install.sh --venv-only`) is applied over apt's numpy 1.24 and python3-pywt, a C
extension built against numpy 1.x the way picamera2's simplejpeg is.

Cached under /var/cache/leukoscope-aarch64 (or $LEUKOSCOPE_AARCH64_CACHE): the base system keyed
by its package list, the venv by a hash of pyproject.toml and install.sh, so reruns take seconds.
Needs root (debootstrap, chroot, mounting /proc).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LEUKOSCOPE_AARCH64_CACHE", "/var/cache/leukoscope-aarch64"))
SUITE, MIRROR = "bookworm", "http://deb.debian.org/debian"
# python3-pywt: a small apt C extension compiled against numpy 1.x, like picamera2's simplejpeg.
PACKAGES = ["python3", "python3-venv", "python3-numpy", "python3-pywt"]
PREFIX = "/opt/leukoscope"
CONTROL = "/opt/numpy2-control"  # a venv with numpy 2 over the same apt packages: must break them
BINFMT = Path("/proc/sys/fs/binfmt_misc")
SOURCES = ["device", "systemd", "pyproject.toml", "README.md", "LICENSE"]


def base_key() -> str:
    recipe = json.dumps([SUITE, MIRROR, "minbase", PACKAGES]).encode()
    return hashlib.sha256(recipe).hexdigest()[:12]


def venv_key() -> str:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = [project.get("dependencies", []), project.get("optional-dependencies", {}).get("device", [])]
    h = hashlib.sha256(json.dumps([PREFIX, CONTROL, base_key(), deps]).encode())
    h.update((REPO / "systemd/install.sh").read_bytes())
    return h.hexdigest()[:12]


def root_dir() -> Path:
    return CACHE / f"bookworm-arm64-{base_key()}"


def why_not() -> str | None:
    """None if this machine can run the chroot, else why not (the test's skip message)."""
    if sys.platform != "linux":
        return "not Linux: debootstrap and chroot need a Linux host"
    if os.geteuid() != 0:
        return "not root: debootstrap, chroot and mounting /proc need root (CI runs scripts/test.sh as root)"
    for tool in ("debootstrap", "chroot", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/test.sh installs debootstrap qemu-user-static binfmt-support)"
    if platform.machine() == "aarch64":
        return None  # runs natively
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        return "qemu-user-static is not installed (apt install qemu-user-static binfmt-support)"
    try:
        subprocess.run([qemu, "--version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{qemu} does not run here ({exc})"
    if not (BINFMT / "status").exists():
        return (f"binfmt_misc is not mounted at {BINFMT} (mount -t binfmt_misc binfmt_misc {BINFMT}; "
                "a container may forbid it): without it the kernel cannot hand arm64 programs to qemu")
    entry = BINFMT / "qemu-aarch64"
    if not entry.exists():
        return ("no qemu-aarch64 binfmt handler registered (apt install qemu-user-static binfmt-support; "
                "update-binfmts --enable qemu-aarch64)")
    text = entry.read_text()
    if not text.startswith("enabled"):
        return "the qemu-aarch64 binfmt handler is disabled (update-binfmts --enable qemu-aarch64)"
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(" ") for line in text.splitlines())}
    interp = fields.get("interpreter", "")
    if "F" not in fields.get("flags:", ""):
        # without the F(ix-binary) flag the interpreter must exist inside the chroot too
        return f"the qemu-aarch64 binfmt handler ({interp}) lacks the F flag, so it cannot run inside a chroot"
    return None


def log(msg: str) -> None:
    print(f"[aarch64] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked():
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _mounted(root: Path):
    """/proc (Python and LiteRT read it) and the host's DNS and CA bundle, for pip."""
    for f in ("/etc/resolv.conf", os.environ.get("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt")):
        if Path(f).is_file():
            dest = root / f.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
    proc = root / "proc"
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)


def _remove_tree(path: Path) -> None:
    """rm -rf a chroot, after unmounting what an interrupted run may have left mounted in it."""
    for sub in ("proc", "sys", "dev/pts", "dev"):
        if os.path.ismount(path / sub):
            subprocess.run(["umount", "-l", str(path / sub)], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _copy_sources(root: Path) -> None:
    src = root / "src"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        else:
            shutil.copy2(p, src / name)


def _env() -> dict:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    for k in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "http_proxy", "https_proxy", "HTTP_PROXY",
              "HTTPS_PROXY", "no_proxy", "NO_PROXY", "PIP_INDEX_URL"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def _chroot(root: Path, script: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["chroot", str(root), "/bin/bash", "-c", script], capture_output=True, text=True,
                         env=_env(), timeout=timeout)
    if check and out.returncode != 0:
        raise RuntimeError(f"in the arm64 chroot, `{script}` failed ({out.returncode}):\n{out.stdout[-3000:]}\n"
                           f"{out.stderr[-3000:]}")
    return out


def build(timeout: float = 1500) -> dict:
    """Make (or reuse) the chroot and the venv; returns what was done and how long it took."""
    reason = why_not()
    if reason:
        raise RuntimeError(reason)
    report = {"root": str(root_dir()), "base": "cached", "venv": "cached"}
    root = root_dir()
    with _locked():
        if not (root / ".complete").exists():
            t0 = time.monotonic()
            tmp = root.with_name(root.name + ".partial")
            _remove_tree(tmp)
            log(f"debootstrap --arch=arm64 {SUITE} with {', '.join(PACKAGES)} (first run only)")
            subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                            SUITE, str(tmp), MIRROR], check=True, capture_output=True, timeout=timeout)
            (tmp / ".complete").write_text(base_key())
            tmp.rename(root)
            for old in CACHE.glob("bookworm-arm64-*"):  # an older recipe's chroot: 400 MB we no longer use
                if old != root:
                    _remove_tree(old)
            report["base"] = f"built in {time.monotonic() - t0:.0f} s"
        arch = _chroot(root, "uname -m; dpkg --print-architecture", 120)
        report["arch"] = arch.stdout.split()
        stamp = root / PREFIX.lstrip("/") / ".recipe"
        if not stamp.exists() or stamp.read_text() != venv_key():
            t0 = time.monotonic()
            _copy_sources(root)
            with _mounted(root):
                shutil.rmtree(root / PREFIX.lstrip("/"), ignore_errors=True)
                shutil.rmtree(root / CONTROL.lstrip("/"), ignore_errors=True)
                log("applying the installer's venv recipe: systemd/install.sh --venv-only")
                _chroot(root, f"cd /src && bash systemd/install.sh --venv-only --prefix {PREFIX}", timeout)
                # the control: the same apt packages under numpy 2, which is what broke the Pi camera
                _chroot(root, f"python3 -m venv --system-site-packages {CONTROL} && "
                              f"{CONTROL}/bin/python -m pip install --quiet 'numpy>=2,<3'", timeout)
            stamp.write_text(venv_key())
            report["venv"] = f"built in {time.monotonic() - t0:.0f} s"
    return report


def run(script: str, timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Run a bash script inside the chroot, with this checkout's sources at /src (first on PYTHONPATH
    in the scripts the test writes), /proc mounted."""
    root = root_dir()
    with _locked():
        _copy_sources(root)
        with _mounted(root):
            return _chroot(root, script, timeout, check=check)


@contextlib.contextmanager
def background(script: str, files: dict[str, str] | None = None):
    """Start a bash script inside the chroot (e.g. `leukoscope serve`) and stop it on leaving; ``files``
    are written into the chroot first ({path inside: text}). Yields the Popen (stdout+stderr to a log)."""
    root = root_dir()
    with _locked():
        _copy_sources(root)
        for path, text in (files or {}).items():
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        with _mounted(root):
            log_file = open(root / "tmp/background.log", "w+")
            proc = subprocess.Popen(["chroot", str(root), "/bin/bash", "-c", "exec " + script], env=_env(),
                                    stdout=log_file, stderr=subprocess.STDOUT)
            try:
                yield proc, log_file
            finally:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                log_file.close()


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "check"
    if cmd == "check":
        reason = why_not()
        print(reason or "ok: this machine can run the arm64 chroot")
        return 1 if reason else 0
    if cmd == "build":
        t0 = time.monotonic()
        report = build()
        report["total"] = f"{time.monotonic() - t0:.0f} s"
        print(json.dumps(report))
        return 0
    if cmd == "run":
        out = run(" ".join(argv[1:]))
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        return out.returncode
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
