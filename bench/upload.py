"""The largest field upload the appliance accepts (16,000,000 pixels: 4000x4000), and oversized ones
in parallel: answer time and the server's peak RSS (VmHWM), against a real appliance on 127.0.0.1.

    python -m bench.upload [--repeat 3] [--parallel 8]
"""
from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from bench import result
from testkit.appliance import REPO, Appliance, open_sample


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    """A real field scaled to ``size`` (smear-like content, not a flat colour that compresses to nothing)."""
    field = Image.open(REPO / "device/assets/fields/BloodImage_00000.jpg").convert("RGB").resize(size)
    buf = io.BytesIO()
    field.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def main(argv=None) -> int:
    import requests

    from testkit.web import signed_in

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args(argv)
    app = Appliance(Path(tempfile.mkdtemp(prefix="leukoscope-upload-")))
    try:
        s = signed_in(app.base)
        sample_url, token = open_sample(s, app.base, "UPLOAD")
        rss_start = peak_rss_mb(app.proc.pid)
        largest = encoded((4000, 4000), "JPEG")
        times, codes = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = s.post(sample_url + "/upload", data={"csrf_token": token}, timeout=300,
                       files={"image": ("largest.jpg", largest, "image/jpeg")}, headers={"Accept": "application/json"})
            times.append(time.perf_counter() - t0)
            codes.append(r.status_code)
        rss_largest = peak_rss_mb(app.proc.pid)
        largest_png = encoded((4000, 4000), "PNG")  # no reduced-scale decoding for PNG: the full 16 MP
        t0 = time.perf_counter()
        r = s.post(sample_url + "/upload", data={"csrf_token": token}, timeout=300,
                   files={"image": ("largest.png", largest_png, "image/png")}, headers={"Accept": "application/json"})
        png = {"bytes": len(largest_png), "status": r.status_code, "seconds": round(time.perf_counter() - t0, 2),
               "peak_rss_mb": round(peak_rss_mb(app.proc.pid), 1)}
        oversized = encoded((7000, 7000), "PNG")
        answers, lock = [], threading.Lock()
        health_ms = []

        def upload():
            t0 = time.perf_counter()
            r = s.post(sample_url + "/upload", data={"csrf_token": token}, timeout=300,
                       files={"image": ("huge.png", oversized, "image/png")}, headers={"Accept": "application/json"})
            with lock:
                answers.append((r.status_code, time.perf_counter() - t0))

        threads = [threading.Thread(target=upload) for _ in range(args.parallel)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            t0 = time.perf_counter()
            ok = requests.get(app.base + "/health", timeout=30).status_code == 200
            health_ms.append((time.perf_counter() - t0) * 1000 if ok else float("inf"))
            time.sleep(0.2)
        for t in threads:
            t.join()
        figures = {
            "largest_accepted": {"pixels": 4000 * 4000, "bytes": len(largest), "status": codes,
                                 "seconds": [round(t, 2) for t in times]},
            "peak_rss_mb_after_largest": round(rss_largest, 1), "rss_mb_at_start": round(rss_start, 1),
            "largest_png": png,
            "oversized_parallel": {"n": args.parallel, "bytes_each": len(oversized), "pixels": 7000 * 7000,
                                   "status": sorted({c for c, _ in answers}),
                                   "max_seconds": round(max(t for _, t in answers), 2)},
            "peak_rss_mb_after_oversized": round(peak_rss_mb(app.proc.pid), 1),
            "health_during_oversized_max_ms": round(max(health_ms), 1) if health_ms else None,
        }
        print(f"largest accepted field (4000x4000 JPEG, {len(largest) / 1e6:.1f} MB): status {codes}, "
              f"{', '.join(f'{t:.2f}' for t in times)} s; peak RSS {rss_largest:.0f} MB")
        print(f"largest accepted PNG (4000x4000, {png['bytes'] / 1e6:.1f} MB): status {png['status']}, "
              f"{png['seconds']} s; peak RSS {png['peak_rss_mb']} MB")
        print(f"{args.parallel} parallel 7000x7000 PNGs: status {figures['oversized_parallel']['status']}, "
              f"slowest answer {figures['oversized_parallel']['max_seconds']} s; peak RSS "
              f"{figures['peak_rss_mb_after_oversized']} MB; /health max {figures['health_during_oversized_max_ms']} ms")
        result({"bench": "upload", **figures})
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
