"""N concurrent clients, each a mix of page views, status polls, captures and exports, for a fixed
time against a real appliance on 127.0.0.1; errors and p50/p95/p99 per request type.

    python -m bench.load [--clients 30] [--seconds 60]
    python -m bench.load --operator [--clients 10] [--seconds 60]

Targets (issue 12): 0 errors, capture p95 <= 1 s, page p95 <= 300 ms.

``--operator``: the realistic mix of a box (issue 24): one operator capturing a field every 2 s into
their own sample while ``--clients`` others browse the pages and export reports (no captures); the
operator's capture latency is reported as ``operator_capture`` (target p95 <= 1 s).
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
from testkit.appliance import Appliance, open_sample

# one client's cycle of 20 requests: pages most, captures and exports now and then
CYCLE = (["page"] * 8 + ["status"] * 7 + ["capture"] * 3 + ["export"] * 2)
# a viewer's cycle in the operator mix: pages, the status poll and exports, no captures
VIEWER_CYCLE = (["page"] * 8 + ["status"] * 7 + ["export"] * 3)
OPERATOR_EVERY_S = 2.0


def main(argv=None) -> int:
    import requests

    from testkit.web import signed_in

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--operator", action="store_true",
                    help="one operator capturing every 2 s; --clients others browse and export")
    args = ap.parse_args(argv)
    app = Appliance(Path(tempfile.mkdtemp(prefix="leukoscope-load-")))
    try:
        admin = signed_in(app.base)
        sample_url, token = open_sample(admin, app.base, "LOAD")
        lat = defaultdict(list)
        errors = defaultdict(int)
        codes = defaultdict(int)
        stop_at = time.monotonic() + args.seconds
        lock = threading.Lock()
        pages = [app.base + "/", app.base + "/history", sample_url, sample_url + "/review"]
        exports = [sample_url + "/cells.csv", sample_url + "/cells.json", sample_url + "/report.pdf"]

        cycle = VIEWER_CYCLE if args.operator else CYCLE
        if args.operator:  # the viewers' pages show a sample with fields; the operator captures into another
            for _ in range(3):
                admin.post(sample_url + "/capture", headers={"X-CSRFToken": token, "Accept": "application/json"})
            operator_url, _ = open_sample(admin, app.base, "OPERATOR")

        def record(kind: str, dt: float, code: int) -> None:
            with lock:
                lat[kind].append(dt)
                if code != 200:
                    errors[kind] += 1
                    codes[f"{kind}:{code}"] += 1

        def operator():
            s = requests.Session()
            s.cookies.update(admin.cookies)
            next_at = time.monotonic()
            while time.monotonic() < stop_at:
                time.sleep(max(0.0, next_at - time.monotonic()))
                next_at += OPERATOR_EVERY_S
                t0 = time.perf_counter()
                try:
                    code = s.post(operator_url + "/capture", timeout=60,
                                  headers={"X-CSRFToken": token, "Accept": "application/json"}).status_code
                except requests.RequestException:
                    code = 0
                record("operator_capture", (time.perf_counter() - t0) * 1000, code)

        def client(i: int):
            s = requests.Session()
            s.cookies.update(admin.cookies)
            n = i  # clients start at different points of the cycle
            while time.monotonic() < stop_at:
                kind = cycle[n % len(cycle)]
                n += 1
                if kind == "capture":
                    call = lambda: s.post(sample_url + "/capture", timeout=60,  # noqa: E731
                                          headers={"X-CSRFToken": token, "Accept": "application/json"})
                elif kind == "status":
                    call = lambda: s.get(app.base + "/api/status", timeout=60)  # noqa: E731
                elif kind == "page":
                    url = pages[n % len(pages)]
                    call = lambda: s.get(url, timeout=60)  # noqa: E731
                else:
                    url = exports[n % len(exports)]
                    call = lambda: s.get(url, timeout=60)  # noqa: E731
                t0 = time.perf_counter()
                try:
                    code = call().status_code
                except requests.RequestException:
                    code = 0
                record(kind, (time.perf_counter() - t0) * 1000, code)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        if args.operator:
            threads.append(threading.Thread(target=operator))
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.seconds + 120)
        figures = {k: {"requests": len(v), "errors": errors[k],
                       **{f"p{q}_ms": round(float(np.percentile(v, q)), 1) for q in (50, 95, 99)}}
                   for k, v in sorted(lat.items())}
        total_errors = sum(errors.values())
        for k, f in figures.items():
            print(f"{k:>8}: {f['requests']} requests, {f['errors']} errors, p50 {f['p50_ms']} ms, "
                  f"p95 {f['p95_ms']} ms, p99 {f['p99_ms']} ms")
        if codes:
            print("errors by status:", dict(codes))
        result({"bench": "load", "mix": "operator" if args.operator else "crowd", "clients": args.clients,
                "seconds": args.seconds, "errors": total_errors,
                "error_codes": dict(codes), "requests": sum(len(v) for v in lat.values()), **figures,
                "target": {"errors": 0, "capture_p95_ms": 1000, "page_p95_ms": 300, "operator_capture_p95_ms": 1000},
                "server_rss_mb": round(app.rss_mb(), 1), "health_after": app.health()})
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
