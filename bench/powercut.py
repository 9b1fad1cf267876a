"""Power cuts: kill -9 the appliance at random moments during captures, restart, check.

After every kill: PRAGMA integrity_check is ok, every field and cell row has its
image file, no unfinished sample shows as finished, and every field whose capture
was acknowledged (HTTP 200 with its field id) is still there; after every restart
the start-up check's repairs are collected from the audit log.

    python -m bench.powercut [--cycles 200] [--clients 4] [--seed 1]
"""
from __future__ import annotations

import argparse
import json
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

from bench import result
from testkit.appliance import Appliance

def check_records(db: Path, data_dir: Path) -> dict:
    conn = sqlite3.connect(db, timeout=30)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        missing = [rel for (rel,) in conn.execute("SELECT image_path FROM fields UNION SELECT crop_path FROM cells")
                   if not (data_dir / rel).is_file()]
        bad_finished = conn.execute("SELECT COUNT(*) FROM samples WHERE status = 'finished' AND "
                                    "(finished_at IS NULL OR result_json IS NULL)").fetchone()[0]
        bad_open = conn.execute("SELECT COUNT(*) FROM samples WHERE status = 'open' AND "
                                "(finished_at IS NOT NULL OR result_json IS NOT NULL)").fetchone()[0]
        fields = conn.execute("SELECT COUNT(*) FROM fields").fetchone()[0]
        return {"integrity": integrity, "missing_files": missing, "bad_finished": bad_finished, "bad_open": bad_open,
                "fields": fields}
    finally:
        conn.close()


def field_ids(db: Path) -> set[int]:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM fields")}
    finally:
        conn.close()


def run(cycles: int, workdir: Path, seed: int = 1, log=print, clients: int = 2) -> dict:
    import requests

    from testkit.web import csrf_of, signed_in

    rng = random.Random(seed)
    data_dir = workdir / "data"
    extra_config = ""
    session: requests.Session | None = None
    sample_url = None
    stats = {"cycles": 0, "captures_answered": 0, "kills": 0, "startup_repairs": 0,
             "orphans_removed": 0, "acknowledged_lost": 0, "clients": clients, "failures": []}
    acknowledged: set[int] = set()
    t_start = time.monotonic()
    for cycle in range(cycles):
        try:
            app = Appliance(workdir, extra_config, data_dir)
        except RuntimeError:
            stats["failures"].append(f"cycle {cycle}: the appliance did not restart")
            return stats
        base = app.base
        if session is None:
            session = signed_in(base)
        if sample_url is None or rng.random() < 0.1:
            if sample_url is not None and rng.random() < 0.5:  # finish the old sample now and then
                page = session.get(base + sample_url)
                session.post(base + sample_url + "/finish", data={"csrf_token": csrf_of(page.text), "confirmed": "1"})
            page = session.get(base + "/")
            r = session.post(base + "/samples", data={"csrf_token": csrf_of(page.text),
                                                      "sample_code": f"PC-{cycle}"})
            sample_url = "/samples/" + r.url.rstrip("/").split("/")[-1]
        token = csrf_of(session.get(base + sample_url).text)
        stop = threading.Event()

        def capture(session, base, sample_url, token, stop):
            while not stop.is_set():
                try:
                    r = session.post(base + sample_url + "/capture", timeout=10,
                                     headers={"X-CSRFToken": token, "Accept": "application/json"})
                    if r.status_code == 200:
                        stats["captures_answered"] += 1
                        acknowledged.add(r.json()["field_id"])
                except requests.RequestException:
                    return  # the process died under it: expected

        threads = [threading.Thread(target=capture, args=(session, base, sample_url, token, stop)) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.02, 0.5))
        app.kill()
        stop.set()
        for t in threads:
            t.join(15)
        stats["kills"] += 1
        state = check_records(data_dir / "leukoscope.db", data_dir)
        problems = []
        if state["integrity"] != "ok":
            problems.append(f"integrity {state['integrity']}")
        if state["missing_files"]:
            problems.append(f"rows without files: {state['missing_files'][:3]}")
        if state["bad_finished"] or state["bad_open"]:
            problems.append("sample status inconsistent")
        lost = acknowledged - field_ids(data_dir / "leukoscope.db")
        if lost:
            stats["acknowledged_lost"] += len(lost)
            problems.append(f"{len(lost)} acknowledged field(s) lost: {sorted(lost)[:5]}")
            acknowledged -= lost
        if problems:
            stats["failures"].append(f"cycle {cycle}: " + "; ".join(problems))
        stats["cycles"] = cycle + 1
    # one last start: the start-up check runs and reports what it repaired
    conn = sqlite3.connect(data_dir / "leukoscope.db")
    repairs = [json.loads(d) for (d,) in conn.execute("SELECT detail FROM audit WHERE action = 'startup-repair'")]
    conn.close()
    stats["startup_repairs"] = len(repairs)
    stats["orphans_removed"] = sum(len(r.get("orphans_quarantined", [])) + len(r["temp_files_removed"]) for r in repairs)
    stats["rows_without_files"] = sum(len(r["rows_without_files"]) for r in repairs)
    stats["fields_stored"] = check_records(data_dir / "leukoscope.db", data_dir)["fields"]
    stats["seconds"] = round(time.monotonic() - t_start, 1)
    return stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--clients", type=int, default=4, help="capturing clients during each round")
    args = ap.parse_args(argv)
    stats = run(args.cycles, Path(tempfile.mkdtemp(prefix="leukoscope-powercut-")), args.seed, clients=args.clients)
    print(f"{stats['cycles']} power cuts under {stats['clients']} capturing clients, {stats['fields_stored']} fields "
          f"stored, {stats['captures_answered']} acknowledged, {stats['acknowledged_lost']} acknowledged lost, "
          f"{len(stats['failures'])} failures; "
          f"start-up check repaired {stats['orphans_removed']} orphan/temp files in {stats['startup_repairs']} restarts")
    result({"bench": "powercut", **{k: v for k, v in stats.items() if k != "failures"},
            "failures": stats["failures"][:20]})
    return 0 if not stats["failures"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
