"""Store and forward under faults: finished samples reach the district's Orthanc exactly once.

A real Orthanc (own process, temporary folder, authentication on, DICOMweb plugin) behind a loopback TCP proxy.
The box is a real process (the records, the model bundle, the PDF report, the sender thread) that finishes
samples one by one and prints ``ACK id`` once each finish committed. While it runs, at random: the box is
killed with SIGKILL and restarted, Orthanc is stopped and started again, the proxy refuses every connection
for a while, and the proxy drops connections in the middle of requests. Then everything comes back and the
queue drains. Checked in Orthanc (REST): every acknowledged sample's study is there with exactly its objects
(fields + cells' report + PDF), no object more (``duplicated``), none missing (``lost``).

Second phase: a clinic's day of work (60 samples) finished while the district is down, then the link
returns: the queue's drain time, samples per minute and bytes per sample.

    python -m bench.district [--samples 200] [--outage 60] [--seed 1] [--fast]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import result

WORKER_RETRY = {"retry_base_s": 0.2, "retry_max_s": 2, "poll_seconds": 1, "timeout_s": 10}


# ---- the box process ---------------------------------------------------------------------------------
def worker(data_dir: Path, url: str, user: str, password: str) -> int:
    """A box without its web server: finish every open sample (printing ACK after each commit) and send."""
    from device.records import samples as records
    from device.box.runtime import build_runtime
    from device.config import AppConfig
    from device.district.sender import Sender
    from device.records import district as outbox
    from device.web import create_app

    cfg = AppConfig()
    cfg.storage.data_dir = str(data_dir)
    cfg.district.url, cfg.district.username, cfg.district.password = url, user, password
    for k, v in WORKER_RETRY.items():
        setattr(cfg.district, k, v)
    rt = build_runtime(cfg, start=False)
    rt.district = Sender(rt.store, lambda: rt.config)
    create_app(rt)  # gives the sender its PDF maker
    rt.district.start()
    rng = random.Random(os.getpid())
    for row in reversed(records.search_samples(rt.store, flag="open", limit=100000)):
        records.finish_sample(rt.store, row["id"], "bench", cfg.sample.flags)
        print(f"ACK {row['id']}", flush=True)
        rt.district.wake()
        time.sleep(rng.random() * 0.05)
    while True:
        q = outbox.queue_summary(rt.store)
        if q["waiting"] == 0 and q["refused"] == 0:
            print("DRAINED", flush=True)
        time.sleep(0.2)


class Box:
    def __init__(self, data_dir: Path, url: str, auth: tuple[str, str], acked: set[int]):
        self.data_dir, self.url, self.auth, self.acked = data_dir, url, auth, acked
        self.proc: subprocess.Popen | None = None
        self.drained = threading.Event()

    def start(self):
        self.drained.clear()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.district", "--worker", str(self.data_dir),
                                      self.url, *self.auth], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc):
        for line in proc.stdout:
            if line.startswith("ACK "):
                self.acked.add(int(line.split()[1]))
            elif line.startswith("DRAINED") and proc is self.proc:
                self.drained.set()

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


# ---- preparing samples -------------------------------------------------------------------------------
def prepare(data_dir: Path, n: int, prefix: str) -> None:
    """``n`` open samples of one analysed field each (real analysis of two bundled fields, reused)."""
    from device.records import samples as records
    from device.box.runtime import build_runtime
    from device.config import AppConfig
    from device.imageio import read_image
    from testkit import REPO

    cfg = AppConfig()
    cfg.storage.data_dir = str(data_dir)
    rt = build_runtime(cfg, start=False)
    try:
        fields = sorted((REPO / "device/assets/fields").glob("BloodImage_000*.jpg"))[:2]
        analysed = [(img, rt.analyzer.analyze(img)) for img in map(read_image, fields)]
        for i in range(n):
            sid = records.create_sample(rt.store, f"{prefix}-{i:04d}", "bench", target=5)
            img, analysis = analysed[i % len(analysed)]
            records.save_field(rt.store, sid, img, analysis, "bench", model=rt.bundle)
    finally:
        rt.stop()


def expected(data_dir: Path) -> dict[int, dict]:
    """Every finished sample: its study UID, its object count, its bytes sent."""
    from device.records import samples as records
    from device.district.dicom import uid
    from device.records import district as outbox
    from device.records.store import Store

    store = Store(data_dir)
    try:
        box = outbox.box_identity(store)
        out = {}
        for s in records.search_samples(store, flag="", limit=100000):
            if s["status"] != "finished":
                continue
            row = outbox.state_of(store, s["id"])
            out[s["id"]] = {"study": uid(box, s["id"], s["created_at"], "study"),
                            "objects": len(records.fields_of(store, s["id"])) + 2,
                            "state": row["state"] if row else None, "bytes": row["bytes"] if row else None}
        return out
    finally:
        store.close()


def check_orthanc(orthanc, exp: dict[int, dict], acked: set[int]) -> dict:
    studies = orthanc.rest("/studies")
    by_uid = {}
    for oid in studies:
        info = orthanc.rest(f"/studies/{oid}")
        by_uid.setdefault(info["MainDicomTags"]["StudyInstanceUID"], []).append(oid)
    lost, duplicated, incomplete = [], 0, []
    for sid in sorted(acked):
        e = exp.get(sid)
        if e is None:
            lost.append(sid)  # acknowledged as finished, but not finished in the box's records
            continue
        oids = by_uid.get(e["study"], [])
        if not oids:
            lost.append(sid)
            continue
        duplicated += len(oids) - 1
        n = len(orthanc.rest(f"/studies/{oids[0]}/instances"))
        if n < e["objects"]:
            incomplete.append(sid)
        duplicated += max(0, n - e["objects"])
    ours = {e["study"] for e in exp.values()}
    duplicated += sum(len(v) for k, v in by_uid.items() if k not in ours)
    return {"lost": len(lost) + len(incomplete), "duplicated": duplicated, "in_orthanc": len(by_uid),
            "lost_ids": (lost + incomplete)[:10]}


def ingest(orthanc, data_dir: Path, n: int, threads: int = 4) -> dict:
    """What one district Orthanc ingests: ``n`` samples' objects (built beforehand, each copy re-identified as
    from another box so that every one is new to Orthanc) posted by ``threads`` boxes at once."""
    from concurrent.futures import ThreadPoolExecutor

    from device.records import samples as records
    from device.district import dicom
    from device.district.export import sample_record
    from device.district.link import Link
    from device.records.store import Store

    store = Store(data_dir)
    try:
        sid = next(s["id"] for s in records.search_samples(store, flag="", limit=10) if s["status"] == "finished")
        rec = sample_record(store, sid, 1, "bench", pdf=b"%PDF-1.4\n" + bytes(56_000))  # the report's size
    finally:
        store.close()
    batches = []
    for i in range(n):
        rec.box_id = f"box-ingest{i:06d}"
        objs = dicom.sample_objects(rec)
        batches.append(([dicom.to_bytes(o) for o in objs], [str(o.SOPInstanceUID) for o in objs]))
    t0 = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: Link(orthanc.dicomweb, *orthanc.auth).store(*b), batches))
    dt = time.monotonic() - t0
    return {"ingest_samples_per_minute": round(n / dt * 60, 1), "ingest_threads": threads,
            "ingest_bytes_per_sample": round(sum(len(p) for b in batches for p in b[0]) / n)}


def wait_for(cond, timeout: float, step: float = 0.1) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(step)
    return cond()


def run(samples: int, outage_samples: int, seed: int, workdir: Path, log=print) -> dict:
    from testkit.orthanc import FlakyProxy, Orthanc, unavailable

    why = unavailable()
    if why:
        raise SystemExit(f"cannot run: {why}")
    rng = random.Random(seed)
    orthanc = Orthanc(workdir / "orthanc").start()
    proxy = FlakyProxy(orthanc.port, drop=0.25, seed=seed)
    data_dir = workdir / "box"
    t_prep = time.monotonic()
    prepare(data_dir, samples, "F")
    log(f"prepared {samples} samples in {time.monotonic() - t_prep:.1f} s")
    acked: set[int] = set()
    box = Box(data_dir, f"http://127.0.0.1:{proxy.port}/dicom-web", orthanc.auth, acked)
    kills = orthanc_restarts = cuts = 0
    box.start()
    t0 = time.monotonic()
    # chaos while the box finishes and sends, until every sample is acknowledged and the queue drained
    deadline = t0 + max(120, samples * 3)
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.3, 1.5))
        if box.drained.is_set():  # the box finished every sample (a kill may have eaten an ACK) and sent them
            break
        event = rng.random()
        if event < 0.3:
            box.kill()
            kills += 1
            box.start()
        elif event < 0.5:
            orthanc.stop()
            orthanc_restarts += 1
            time.sleep(rng.uniform(0.2, 1.5))
            orthanc.start()
        elif event < 0.7:
            proxy.cut = True
            cuts += 1
            time.sleep(rng.uniform(0.2, 1.5))
            proxy.cut = False
    proxy.drop, proxy.cut = 0.0, False  # everything back: the rest must drain
    if not box.drained.wait(120):
        log("the queue did not drain within 120 s of the link's return")
    fault_s = time.monotonic() - t0
    box.stop()
    exp = expected(data_dir)
    fault = check_orthanc(orthanc, exp, acked)
    log(f"fault run: {len(acked)} acknowledged, {kills} kills, {orthanc_restarts} Orthanc restarts, {cuts} cuts, "
        f"{proxy.drops} mid-request drops; {fault}")

    # phase 2: a day's samples finished while the district is down, then the link returns
    prepare(data_dir, outage_samples, "D")
    orthanc.stop()
    n_before = len(acked)
    box.start()
    wait_for(lambda: len(acked) >= n_before + outage_samples, 300)
    time.sleep(1.0)  # the box has tried and failed at least once: the queue is in back-off
    orthanc.start()
    t_link = time.monotonic()
    drained = box.drained.wait(600) and wait_for(lambda: box.drained.is_set(), 1)
    drain_s = time.monotonic() - t_link
    box.stop()
    exp = expected(data_dir)
    final = check_orthanc(orthanc, exp, acked)
    sent_bytes = [e["bytes"] for e in exp.values() if e["bytes"]]
    ingested = ingest(orthanc, data_dir, max(20, outage_samples))
    stats = orthanc.rest("/statistics")
    orthanc.stop()
    proxy.close()
    return {"samples": len(acked), "fault_samples": samples, "link_drops": orthanc_restarts + cuts + proxy.drops,
            "orthanc_restarts": orthanc_restarts, "link_cuts": cuts, "mid_request_drops": proxy.drops,
            "box_kills": kills, "lost": final["lost"], "duplicated": final["duplicated"],
            "lost_ids": final["lost_ids"], "in_orthanc": final["in_orthanc"], "fault_run_s": round(fault_s, 1),
            "outage_samples": outage_samples, "queue_drain_s": round(drain_s, 2) if drained else None,
            "samples_per_minute": round(outage_samples / drain_s * 60, 1) if drained and drain_s else 0.0,
            "bytes_per_sample": round(sum(sent_bytes) / len(sent_bytes)) if sent_bytes else 0,
            "orthanc_disk_mb": round(int(stats["TotalDiskSize"]) / 1e6, 2)} | ingested


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200, help="finished samples sent under faults")
    ap.add_argument("--outage", type=int, default=60, help="samples finished while the district is down")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--fast", action="store_true", help="CI: 10 samples under faults, 8 after the outage")
    ap.add_argument("--worker", nargs=4, metavar=("DATA_DIR", "URL", "USER", "PASSWORD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker[0]), *args.worker[1:])
    samples, outage = (10, 8) if args.fast else (args.samples, args.outage)
    with tempfile.TemporaryDirectory(prefix="leukoscope-district-") as tmp:
        out = run(samples, outage, args.seed, Path(tmp))
    result(out)
    return 0 if out["lost"] == 0 and out["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
