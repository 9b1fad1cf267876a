"""Many capture cycles against a real appliance: RSS growth and database/disk growth per cycle.

    python -m bench.soak [--cycles 10000]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench import result
from testkit.appliance import Appliance, open_sample


def main(argv=None) -> int:
    from testkit.web import signed_in

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=100, help="cycles before the first RSS reading")
    ap.add_argument("--new-sample-every", type=int, default=100)
    args = ap.parse_args(argv)
    app = Appliance(Path(tempfile.mkdtemp(prefix="leukoscope-soak-")))
    errors = 0
    try:
        s = signed_in(app.base)
        t0 = time.monotonic()
        rss = []
        sample_url = token = None
        for i in range(args.cycles + args.warmup):
            if i % args.new_sample_every == 0:
                sample_url, token = open_sample(s, app.base, f"SOAK-{i}")
            r = s.post(sample_url + "/capture", headers={"X-CSRFToken": token, "Accept": "application/json"}, timeout=60)
            errors += r.status_code != 200
            if i == args.warmup:
                rss_start, disk_start, db_start = app.rss_mb(), app.disk_bytes(), (app.data_dir / "leukoscope.db").stat().st_size
                t_start = time.monotonic()
            if i >= args.warmup and (i - args.warmup) % max(1, args.cycles // 20) == 0:
                rss.append(round(app.rss_mb(), 1))
        rss_end = app.rss_mb()
        disk_end, db_end = app.disk_bytes(), (app.data_dir / "leukoscope.db").stat().st_size
        wal = app.data_dir / "leukoscope.db-wal"
        figures = {
            "cycles": args.cycles, "errors": errors, "rss_start_mb": round(rss_start, 1), "rss_end_mb": round(rss_end, 1),
            "rss_growth_mb": round(rss_end - rss_start, 1), "rss_samples_mb": rss,
            "disk_growth_per_cycle_kb": round((disk_end - disk_start) / args.cycles / 1024, 2),
            "db_growth_per_cycle_kb": round((db_end - db_start) / args.cycles / 1024, 3),
            "wal_mb": round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0,
            "seconds": round(time.monotonic() - t_start, 1), "target_rss_growth_mb": 10,
        }
        print(f"{args.cycles} captures, {errors} errors: RSS {figures['rss_start_mb']} -> {figures['rss_end_mb']} MB "
              f"({figures['rss_growth_mb']:+} MB); disk {figures['disk_growth_per_cycle_kb']} KB/cycle, "
              f"database {figures['db_growth_per_cycle_kb']} KB/cycle; {time.monotonic() - t0:.0f} s")
        result({"bench": "soak", **figures})
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
