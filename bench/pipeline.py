"""Frame -> committed result, on one thread, with the default bundle and a real SQLite file.

Median and p90 time from a frame to its committed result, time per cell, peak RSS,
and time from process start to ready (a real `leukoscope serve`). ``--size`` resamples
the real BCCD frames whole to another sensor's size (same optics), e.g. the Raspberry
Pi HQ camera's 4056x3040: the time must not grow with the megapixels beyond one resample.

    python -m bench.pipeline [--fields 200] [--size 4056x3040] [--no-ready]
"""
from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from bench import result
from testkit.bccd import BCCD_ROOT

REPO = Path(__file__).resolve().parent.parent
BCCD = BCCD_ROOT / "JPEGImages"


def time_to_ready(data_dir: Path, i: int) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sock_path = str(data_dir / f"notify-{i}.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "serve", "--port", str(port), "--data-dir",
                             str(data_dir / f"serve-{i}")], cwd=REPO, env=dict(os.environ, NOTIFY_SOCKET=sock_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not sock.recv(4096).startswith(b"READY=1"):
            pass
        return time.monotonic() - t0
    finally:
        proc.terminate()
        proc.wait(30)
        sock.close()


def peak_rss_mb() -> float:
    """This process's own peak (VmHWM): ru_maxrss also counts the parent's memory when the bench was started
    by vfork+exec from a large process (a test run), which reported 503 MB for a 159 MB run."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fields", type=int, default=200)
    ap.add_argument("--size", default="640x480", help="frame size WxH (BCCD frames resampled whole)")
    ap.add_argument("--no-ready", action="store_true", help="skip the time-to-ready measurement")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    import cv2

    from device.records import samples as records
    from device.camera.replay import ReplayCamera
    from device.config import AppConfig
    from device.model.installed import load_active
    from device.model.analyzer import Analyzer
    from device.records.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="leukoscope-pipeline-"))
    ready = [] if args.no_ready else [time_to_ready(tmp, i) for i in range(3)]

    cfg = AppConfig()
    bundle, clf, _ = load_active("", tmp, threads=1)
    analyzer = Analyzer(clf, cfg.field_settings())
    store = Store(tmp / "data")
    cam = ReplayCamera(BCCD if BCCD.is_dir() else None)
    cam.open()
    sid = records.create_sample(store, "bench", "bench")
    totals, per_cell, n_cells, stages = [], [], 0, {"locate": [], "classify": []}
    sources = [cam.capture().image for _ in range(min(args.fields, 10))]

    def sensor_frame(img):
        """The frame the other sensor would deliver; one at a time, like a camera (holding ten 12 MP
        frames made the bench itself 370 MB of the 472 MB it reported)."""
        if img.shape[:2] != (height, width):
            # Another sensor behind the same optics: its shape picks a part of the field (crop to
            # its aspect), its pixel count the sampling (one uniform resize).
            h, w = img.shape[:2]
            if width / height > w / h:
                ch = round(w * height / width)
                img = img[(h - ch) // 2:(h - ch) // 2 + ch]
            else:
                cw = round(h * width / height)
                img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC if width > img.shape[1]
                             else cv2.INTER_AREA)
        return img

    frame = None
    for i in range(args.fields):
        del frame  # the previous frame is gone before the camera delivers the next
        # resampled outside the timing; a plain object (a class per frame would keep each frame until the
        # cyclic garbage collector ran)
        frame = SimpleNamespace(image=sensor_frame(sources[i % len(sources)]), captured_at=None, source="bench")
        t0 = time.perf_counter()
        analysis = analyzer.analyze(frame.image)
        records.save_field(store, sid, frame.image, analysis, "bench", frame.captured_at, frame.source)
        dt = (time.perf_counter() - t0) * 1000
        totals.append(dt)
        stages["locate"].append(analysis.timings_ms["locate"])
        stages["classify"].append(analysis.timings_ms["classify"])
        if analysis.cells:
            per_cell.append(analysis.timings_ms["classify"] / len(analysis.cells))
            n_cells += len(analysis.cells)
    rss_mb = peak_rss_mb()
    figures = {
        "size": f"{width}x{height}", "fields": args.fields, "cells": n_cells,
        "locate_median_ms": round(float(np.median(stages["locate"])), 2),
        "classify_median_ms": round(float(np.median(stages["classify"])), 2), "frame_to_commit_median_ms": round(float(np.median(totals)), 2),
        "frame_to_commit_p90_ms": round(float(np.percentile(totals, 90)), 2),
        "classify_per_cell_median_ms": round(float(np.median(per_cell)), 3) if per_cell else None,
        "peak_rss_mb": round(rss_mb, 1), "ready_s_median": round(float(np.median(ready)), 3) if ready else None,
        "ready_s_max": round(max(ready), 3) if ready else None, "threads": 1, "model": bundle.name,
        "targets": {"frame_to_commit_ms": 100, "rss_mb": 150, "ready_s": 3},
    }
    print(f"{figures['size']}: frame -> committed result: median {figures['frame_to_commit_median_ms']} ms, "
          f"p90 {figures['frame_to_commit_p90_ms']} ms; {figures['classify_per_cell_median_ms']} ms per cell; "
          f"peak RSS {figures['peak_rss_mb']} MB; ready in {figures['ready_s_median']} s")
    result({"bench": "pipeline", **figures})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
