"""N concurrent clients polling status and history and capturing, for a fixed time,
against a real appliance on 127.0.0.1.

    python -m bench.load [--clients 20] [--seconds 30]
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from bench import result
from bench.server import Appliance, open_sample


def main(argv=None) -> int:
    import requests

    from tests.conftest import signed_in

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--capture-every", type=int, default=10, help="each client captures every Nth request")
    args = ap.parse_args(argv)
    app = Appliance(Path(tempfile.mkdtemp(prefix="leukoscope-load-")))
    try:
        admin = signed_in(app.base)
        sample_url, token = open_sample(admin, app.base, "LOAD")
        lat = defaultdict(list)
        errors = defaultdict(int)
        stop_at = time.monotonic() + args.seconds
        lock = threading.Lock()

        def client(i: int):
            s = requests.Session()
            s.cookies.update(admin.cookies)
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                if n % args.capture_every == 0:
                    kind, call = "capture", lambda: s.post(sample_url + "/capture", timeout=30,
                                                           headers={"X-CSRFToken": token, "Accept": "application/json"})
                elif n % 2:
                    kind, call = "status", lambda: s.get(app.base + "/api/status", timeout=30)
                else:
                    kind, call = "history", lambda: s.get(app.base + "/history", timeout=30)
                t0 = time.perf_counter()
                try:
                    ok = call().status_code == 200
                except requests.RequestException:
                    ok = False
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    lat[kind].append(dt)
                    if not ok:
                        errors[kind] += 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 60)
        figures = {k: {"requests": len(v), "errors": errors[k], "p50_ms": round(float(np.percentile(v, 50)), 1),
                       "p95_ms": round(float(np.percentile(v, 95)), 1)} for k, v in sorted(lat.items())}
        total_errors = sum(errors.values())
        for k, f in figures.items():
            print(f"{k:>8}: {f['requests']} requests, {f['errors']} errors, p50 {f['p50_ms']} ms, p95 {f['p95_ms']} ms")
        result({"bench": "load", "clients": args.clients, "seconds": args.seconds, "errors": total_errors,
                "requests": sum(len(v) for v in lat.values()), **figures,
                "status_p95_ms": figures.get("status", {}).get("p95_ms"), "target_status_p95_ms": 200,
                "server_rss_mb": round(app.rss_mb(), 1)})
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
