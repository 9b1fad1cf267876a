"""Issue 24: what an adversarial run still broke, and what a newcomer tripped on. One test per item;
each failed on the code before its fix."""
from __future__ import annotations

import io
import json
import struct
import time
import zipfile
import zlib

import pytest

from testkit import REPO, joined, wait_until
from testkit.web import csrf_of, signed_in, stop_server


# -- 1: a bundle that lies about its sizes -------------------------------------------------------

def _members() -> dict[str, bytes]:
    """The members of a shipped bundle (any bundle in the format will do: only the format is tested)."""
    with zipfile.ZipFile(REPO / "device/assets/models/default.lkb") as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _raw_zip(entries: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """A zip written by hand so its directory can lie: (name, method, crc, declared size, payload)."""
    body, central = io.BytesIO(), io.BytesIO()
    for name, method, crc, declared, payload in entries:
        offset = body.tell()
        n = name.encode()
        body.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21,
                               crc, len(payload), declared, len(n), 0) + n + payload)
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21,
                                  crc, len(payload), declared, len(n), 0, 0, 0, 0, 0, offset) + n)
    cd = central.getvalue()
    start = body.tell()
    return body.getvalue() + cd + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                                              len(cd), start, 0)


def _deflate_zeros(n: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(c.compress(block) for _ in range(n >> 20)) + c.flush()


def _lying_bundle(inflates_to: int = 256 << 20, declares: int = 1_000_000) -> bytes:
    """A shipped bundle whose MODEL_CARD.md declares ``declares`` bytes (CRC of those bytes) but really
    inflates to ``inflates_to``: what the adversarial run installed (there 2 GiB in a 3.7 MB file). The
    compressed size stays below the declared one, so only a bounded read can tell."""
    entries = [(name, zipfile.ZIP_STORED, zlib.crc32(data), len(data), data)
               for name, data in _members().items() if name != "MODEL_CARD.md"]
    entries.append(("MODEL_CARD.md", zipfile.ZIP_DEFLATED, zlib.crc32(bytes(declares)), declares,
                    _deflate_zeros(inflates_to)))
    return _raw_zip(entries)


def _stored(files: dict[str, bytes]) -> list[tuple[str, int, int, int, bytes]]:
    return [(n, zipfile.ZIP_STORED, zlib.crc32(d), len(d), d) for n, d in files.items()]


def test_item1_the_hand_built_zip_is_a_real_bundle():
    """The helper writes zips the reader accepts when they do not lie (so the refusals below are real)."""
    from device.model.bundle import load_bundle

    honest = _raw_zip(_stored(_members()))
    assert load_bundle(data=honest).labels == load_bundle().labels


def test_item1_a_member_inflating_past_its_declared_size_is_refused_fast_and_small():
    import tracemalloc

    from device.model.bundle import BundleError, load_bundle

    data = _lying_bundle()
    assert len(data) < (256 << 20) // 16  # a file a small fraction of what it inflates to...
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(BundleError, match="inflates past its declared size of 1,000,000 bytes"):
            load_bundle(data=data)  # ...that the old reader inflated to 256 MiB and accepted
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, elapsed
    assert peak < 3 * len(data) + (8 << 20), peak  # about the file itself, nothing inflated


def test_item1_sizes_that_cannot_be_true_and_unknown_members_are_refused():
    from device.model.bundle import BundleError, load_bundle

    files = _members()
    card = files["MODEL_CARD.md"]
    # compressed far larger than declared (a 3.7 MB member that claims 1,000 bytes)
    big = [e for e in _stored(files) if e[0] != "MODEL_CARD.md"] + [
        ("MODEL_CARD.md", zipfile.ZIP_DEFLATED, zlib.crc32(bytes(1000)), 1000, _deflate_zeros(256 << 20))]
    with pytest.raises(BundleError, match="more than its declared size"):
        load_bundle(data=_raw_zip(big))
    # a stored member whose stored length is not its declared size
    lie = [e for e in _stored(files) if e[0] != "MODEL_CARD.md"] + [
        ("MODEL_CARD.md", zipfile.ZIP_STORED, zlib.crc32(card), 10, card)]
    with pytest.raises(BundleError, match="stored as"):
        load_bundle(data=_raw_zip(lie))
    # a member of a name no bundle has, however small
    extra = _stored(dict(files, **{"extra.bin": b"x" * 100}))
    with pytest.raises(BundleError, match="unknown archive member 'extra.bin'"):
        load_bundle(data=_raw_zip(extra))
    # a deflate stream that stops short of its declared size
    short = [e for e in _stored(files) if e[0] != "MODEL_CARD.md"] + [
        ("MODEL_CARD.md", zipfile.ZIP_DEFLATED, zlib.crc32(card + b"more"), len(card) + 4,
         zlib.compress(card)[2:-4])]
    with pytest.raises(BundleError, match="ends after"):
        load_bundle(data=_raw_zip(short))


def test_item1_the_same_lie_inside_ood_npz_is_refused():
    """ood.npz is itself a zip: the bounded reader reads it too (np.load would inflate it)."""
    from device.model.bundle import BundleError, load_bundle, pack

    import numpy as np

    files = _members()
    k = len(json.loads(files["metadata.json"])["labels"])
    buf = io.BytesIO()  # built here, so the test does not depend on the shipped model's statistics
    np.savez(buf, means=np.zeros((k, 256), np.float32), precision=np.eye(256, dtype=np.float32))
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as inner:
        arrays = {i.filename: inner.read(i) for i in inner.infolist()}
    name = max(arrays, key=lambda k: len(arrays[k]))  # the precision matrix: its compressed lie fits
    entries = _stored({k: v for k, v in arrays.items() if k != name})
    entries.append((name, zipfile.ZIP_DEFLATED, zlib.crc32(bytes(len(arrays[name]))), len(arrays[name]),
                    _deflate_zeros(64 << 20)))
    files["ood.npz"] = _raw_zip(entries)
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="inflates past its declared size"):
        load_bundle(data=pack(files))
    assert time.monotonic() - t0 < 0.5


def _vm(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_item1_settings_model_install_refuses_it_at_baseline_memory(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    token = csrf_of(s.get(base + "/settings").text)
    data = _lying_bundle()
    before = rt.bundle.sha256
    with open("/proc/self/clear_refs", "w") as fh:  # restart the peak-RSS counter (VmHWM)
        fh.write("5")
    rss0 = _vm("VmRSS")
    t0 = time.monotonic()
    r = s.post(base + "/settings/model", data={"csrf_token": token},
               files={"bundle": ("card.lkb", data, "application/octet-stream")})
    elapsed = time.monotonic() - t0
    grown = _vm("VmHWM") - rss0
    assert r.status_code == 400 and "Model refused" in r.text and "inflates past" in r.text
    assert elapsed < 2.0, elapsed
    assert grown < 64 << 20, grown / 2**20  # the old reader grew by the full 256 MiB
    assert not (rt.config.data_dir / "models" / "current.lkb").exists()
    assert rt.bundle.sha256 == before


# -- 2: a full disk after a restart --------------------------------------------------------------

def _fill(path, leave: int = 0) -> None:
    """Write until the file system has only ``leave`` bytes (0: not one byte) left."""
    import os
    import shutil

    fd = None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        while shutil.disk_usage(path.parent).free > leave + (1 << 20):
            os.write(fd, bytes(1 << 20))
        for chunk in ((65536, 4096, 1) if not leave else (4096,)):
            try:
                while shutil.disk_usage(path.parent).free > leave:
                    os.write(fd, bytes(chunk))
            except OSError:
                pass
    except OSError:
        pass
    finally:
        if fd is not None:
            os.close(fd)


@pytest.fixture
def small_disk(tmp_path):
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_item2_full_disk_after_a_restart_sign_in_and_delete_still_work(tmp_path, small_disk, caplog):
    import logging
    import shutil

    import requests

    from device.records import samples as records
    from testkit.web import serving

    data = small_disk / "data"
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    with serving(first, data_dir=data) as (base, app, rt):
        signed_in(base)
        rt.store.min_free_mb = 0
        sid = records.create_sample(rt.store, "OLD-1", "admin")
        rt.loop.capture(sid, "admin")
    # the reserve was spent and the box restarted with about 3 MB free
    (data / "reserve.bin").unlink(missing_ok=True)
    _fill(small_disk / "other-writer", leave=3 << 20)
    assert 2 << 20 < shutil.disk_usage(small_disk).free <= 3 << 20
    caplog.set_level(logging.WARNING, logger="leukoscope.store")
    with serving(second, data_dir=data) as (base, app, rt):
        health = requests.get(base + "/health").json()
        said = [p for p in health["problems"] if "storage reserve" in p]
        assert said and "MB free" in said[0], health  # before: ok with no word of it
        assert any("storage reserve" in r.getMessage() for r in caplog.records)
        admin = signed_in(base, create=False)
        assert "storage reserve" in admin.get(base + "/settings").text
        # another writer takes the last byte: sign-in must still work (before: 507 for every account)
        _fill(small_disk / "other-writer-2")
        assert shutil.disk_usage(small_disk).free == 0
        again = signed_in(base, create=False)
        assert again.get(base + "/history").ok
        # and once more, with the reserve spent: nothing of ours is left to release
        _fill(small_disk / "other-writer-3")
        assert shutil.disk_usage(small_disk).free == 0
        third = signed_in(base, create=False)
        page = third.get(base + f"/samples/{sid}")
        assert page.ok
        wrong = requests.Session()
        for _ in range(5):
            r = wrong.post(base + "/login", data={"csrf_token": csrf_of(wrong.get(base + "/login").text),
                                                  "username": "admin", "password": "not-it-at-all"})
            assert r.status_code == 401
        r = wrong.post(base + "/login", data={"csrf_token": csrf_of(wrong.get(base + "/login").text),
                                              "username": "admin", "password": "not-it-at-all"})
        assert r.status_code == 401 and "locked" in r.text  # guesses are still counted on a full disk
        r = third.post(base + f"/samples/{sid}/delete", data={"csrf_token": csrf_of(page.text), "reason": "full"})
        assert r.status_code in (200, 302) and r.url.endswith("/history"), (r.status_code, r.text[:300])
        with pytest.raises(records.RecordError):
            records.get_sample(rt.store, sid)
        assert not list((data / "images").rglob("*.jpg")) and not list((data / "images").rglob("*.png"))
        assert third.get(base + "/history").ok


# -- 3: settings bounded by what the box can be ---------------------------------------------------

def _settings_form(page: str, folder: str, **change) -> dict:
    form = {"csrf_token": csrf_of(page), "web.clinic_name": "Bounds Clinic", "sample.target_cells": "7",
            "storage.retention_days": "0", "storage.min_free_mb": "50", "camera.backend": "replay",
            "camera.folder": folder, "camera.device": "0", "flags_toml": ""}
    form.update(change)
    return form


def test_item3_settings_that_would_stop_the_box_are_refused_by_field(page_app, admin, tmp_path):
    import shutil

    base, app, rt, _ = page_app
    s = admin
    folder = str(rt.config.camera.folder)
    saved = rt.config.data_dir / "settings.toml"
    before = saved.read_bytes() if saved.exists() else b""
    total_mb = shutil.disk_usage(rt.config.data_dir).total // (1024 * 1024)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    rules = "".join(f'[[sample.flags]]\ncategory = "malignant"\nmessage = "rule {i}"\nlevel = "refer"\nmin_count = {i}\n\n'
                    for i in range(20_000))
    cases = {
        "disk": ({"storage.min_free_mb": str(total_mb + 1)}, "Refuse new captures below this free space",
                 "below the size of the disk"),
        "huge-free": ({"storage.min_free_mb": "10000000"}, "Refuse new captures below this free space",
                      "below the size of the disk"),
        "missing-folder": ({"camera.folder": "/nonexistent"}, "Replay folder", "is not a folder on this box"),
        "proc": ({"camera.folder": "/proc/self"}, "Replay folder", "holds no images"),
        "no-images": ({"camera.folder": str(tmp_path / "empty")}, "Replay folder", "holds no images"),
        "20000-rules": ({"flags_toml": rules}, "Flag rules", "at most"),
        "101-rules": ({"flags_toml": rules[: rules.index("rule 101")].rsplit("[[sample.flags]]", 1)[0]},
                      "Flag rules", "at most 100 rules (got 101)"),
    }
    for name, (change, field, says) in cases.items():
        t0 = time.monotonic()
        r = s.post(base + "/settings", data=_settings_form(s.get(base + "/settings").text, folder, **change))
        assert r.status_code == 400, (name, r.status_code)
        assert field in r.text and says in r.text, (name, r.text[r.text.find("error"):][:300])
        assert time.monotonic() - t0 < 2, name
        assert (saved.read_bytes() if saved.exists() else b"") == before, name  # nothing saved
    # the bounds leave every sane value alone
    r = s.post(base + "/settings", data=_settings_form(s.get(base + "/settings").text, folder,
                                                       **{"storage.min_free_mb": str(total_mb - 1)}),
               allow_redirects=False)
    assert r.status_code == 302 and rt.config.storage.min_free_mb == total_mb - 1
    from device.records import samples as records

    sid = records.create_sample(rt.store, "BOUNDS", "admin")
    rt.config.storage.min_free_mb = rt.store.min_free_mb = 0
    assert rt.loop.capture(sid, "admin")["field_id"]


# -- 4: parallel large uploads bounded ------------------------------------------------------------

def _big_png(w: int = 4000, h: int = 4000) -> bytes:
    import numpy as np
    from PIL import Image

    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    rgb = np.stack([y * 0.5 + x * 0.5, 200 - y * 0.3 + 0 * x, 150 + 0 * y + x * 0.2], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def test_item4_eight_parallel_16mp_uploads_are_bounded_and_health_and_capture_stay_fast(live_app):
    import threading

    import requests

    from device import imageio
    from device.records import samples as records

    slots, retry_after = imageio.DECODE_SLOTS, getattr(imageio, "RETRY_AFTER_S", 5)
    base, app, rt, _ = live_app
    s = signed_in(base)
    sid = records.create_sample(rt.store, "BIG-UPLOADS", "admin")
    token = csrf_of(s.get(base + f"/samples/{sid}").text)
    png = _big_png()
    answers, health, captures = [], [], []

    def upload(i):
        c = requests.Session()
        c.cookies.update(s.cookies)
        t0 = time.monotonic()
        r = c.post(base + f"/samples/{sid}/upload", data={"csrf_token": token}, allow_redirects=False,
                   files={"image": (f"big{i}.png", png, "image/png")}, headers={"Accept": "application/json"})
        answers.append((r.status_code, r.headers.get("Retry-After"), time.monotonic() - t0))

    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    rss0 = _vm("VmRSS")
    workers = [threading.Thread(target=upload, args=(i,)) for i in range(8)]
    for w in workers:
        w.start()
    time.sleep(0.3)
    operator = requests.Session()
    operator.cookies.update(s.cookies)
    while any(w.is_alive() for w in workers):
        t0 = time.monotonic()
        assert requests.get(base + "/health", timeout=30).ok
        health.append(time.monotonic() - t0)
        if len(captures) < 2:
            t0 = time.monotonic()
            r = operator.post(base + f"/samples/{sid}/capture", data={"csrf_token": token},
                              headers={"Accept": "application/json"}, timeout=60)
            captures.append((r.status_code, time.monotonic() - t0))
        time.sleep(0.1)
    joined(workers)
    grown = (_vm("VmHWM") - rss0) / 2**20
    codes = sorted(a[0] for a in answers)
    print(f"uploads {sorted((a[0], round(a[2], 2)) for a in answers)}; /health max {max(health):.2f} s "
          f"over {len(health)}; operator captures {captures}; peak RSS +{grown:.0f} MB, "
          f"held after +{(_vm('VmRSS') - rss0) / 2**20:.0f} MB; {slots} slots")
    assert len(answers) == 8 and set(codes) <= {200, 503}, answers
    # at least one refused at once (the bound held under real concurrency); how many depends on how fast the first
    # uploads finish and free their slot (on a quiet machine up to five were answered in 0.3-0.6 s each)
    assert 1 <= codes.count(200) and codes.count(503) >= 1, answers
    assert all(a[1] == str(retry_after) for a in answers if a[0] == 503), answers
    assert all(a[2] < 2.0 for a in answers if a[0] == 503), answers  # refused at once, the thread freed
    assert max(health) < 1.0, health  # before: /health waited behind the uploads (11.4 s in the report)
    assert captures and all(code == 200 and t < 5.0 for code, t in captures), captures
    assert grown < slots * 200 + 150, grown  # before: every upload decoded and queued at once
    assert _vm("VmRSS") - rss0 < 400 << 20  # memory given back


# -- 7: smaller holes ---------------------------------------------------------------------------

def _float_tiff(values) -> bytes:
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(values, np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def test_item7_all_nan_or_infinite_float_tiff_is_refused_as_unreadable(page_app, admin, recwarn):
    import numpy as np

    from device.records import samples as records
    from device.imageio import ImageError, decode_image

    for name, fill in (("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        with pytest.raises(ImageError, match="unreadable"):
            decode_image(_float_tiff(np.full((64, 64), fill)), name=f"{name}.tif")
    mixed = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    mixed[0, :8] = np.nan
    mixed[1, :8] = np.inf
    rgb = decode_image(_float_tiff(mixed), name="mixed.tif")  # a few bad pixels: still an image
    assert rgb.shape == (64, 64, 3) and rgb[5, 63, 0] == 255 and rgb[0, 0, 0] == 0
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    base, app, rt, _ = page_app
    s = admin
    sid = records.create_sample(rt.store, "NAN-TIFF", "admin")
    token = csrf_of(s.get(base + f"/samples/{sid}").text)
    r = s.post(base + f"/samples/{sid}/upload", data={"csrf_token": token},
               files={"image": ("dark.tif", _float_tiff(np.full((600, 800), np.nan)), "image/tiff")})
    assert r.status_code == 415 and "unreadable" in r.text
    assert records.summary_of(rt.store, sid, rt.config.sample.flags) is not None
    assert rt.store.connect().execute("SELECT COUNT(*) FROM fields WHERE sample_id = ?", (sid,)).fetchone()[0] == 0


def test_item7_one_user_holds_at_most_max_sessions_oldest_out(live_app):
    from device.records.accounts import MAX_SESSIONS

    base, app, rt, _ = live_app
    first = signed_in(base)
    sessions = [first] + [signed_in(base, create=False) for _ in range(MAX_SESSIONS + 5)]
    held = rt.store.connect().execute("SELECT COUNT(*) FROM sessions").fetchone()[0]
    assert held == MAX_SESSIONS
    assert "/login" in first.get(base + "/history").url  # the oldest was signed out
    assert all("/login" not in s.get(base + "/history").url for s in sessions[-MAX_SESSIONS:])


def test_item7_waitress_queue_depth_is_logged_once_per_backlog(caplog):
    import logging
    import threading

    import requests
    import waitress

    from device.serve import quiet_waitress_queue

    def slow(environ, start_response):
        time.sleep(0.05)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    flt = quiet_waitress_queue()
    assert quiet_waitress_queue() is flt  # installed once however often the server starts
    caplog.set_level(logging.WARNING, logger="waitress.queue")
    server = waitress.create_server(slow, host="127.0.0.1", port=0, threads=1)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}/"
        clients = [threading.Thread(target=lambda: [requests.get(url, timeout=30) for _ in range(3)]) for _ in range(20)]
        for c in clients:
            c.start()
        joined(clients)
    finally:
        stop_server(server, t)
    lines = [r.getMessage() for r in caplog.records if r.name == "waitress.queue"]
    assert len(lines) == 1 and "queue depth" in lines[0], lines[:5]
    assert flt.suppressed > 10  # the backlog really happened: before, each of these was a log line
    # a backlog after a quiet spell is a change of state: logged again, saying how deep the last one went
    flt.last -= flt.quiet + 1
    logging.getLogger("waitress.queue").warning("Task queue depth is %d", 3)
    lines = [r.getMessage() for r in caplog.records if r.name == "waitress.queue"]
    assert len(lines) == 2 and "previous backlog reached depth" in lines[1]


# -- 8-11: a newcomer's first five minutes ----------------------------------------------------------

def test_item10_a_busy_port_is_one_line_naming_the_port_and_the_option_and_creates_nothing(tmp_path):
    import socket
    import subprocess
    import sys

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    data = tmp_path / "never-created"
    try:
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "device.cli", "serve", "--port", str(port), "--data-dir", str(data)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        busy.close()
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode != 0
    assert len(lines) == 1 and str(port) in lines[0] and "--port" in lines[0] and "in use" in lines[0], out.stderr
    assert "Traceback" not in out.stderr
    assert not data.exists()  # checked before the data folder and the database were created
    assert time.monotonic() - t0 < 30


def test_item8_9_11_start_says_what_it_does_and_where_the_data_is(tmp_path):
    """The real serve command: the data folder printed before the long start, nothing from TensorFlow's
    XNNPACK line, ready on the port; start.sh says what it is doing at each step."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = tmp_path / "data"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "serve", "--port", str(port), "--data-dir", str(data)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()
        assert f"data folder {data}" in first and str(port) in first, first
        ready = proc.stdout.readline()
        assert "ready on" in ready, ready
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert "XNNPACK" not in err, err[-2000:]
    script = (REPO / "scripts/start.sh").read_text()
    for says in ("Creating the Python environment", "Installing Leukoscope", "Starting Leukoscope"):
        assert f'say "{says}' in script, says


def test_item8_10_start_sh_says_what_it_does_and_a_busy_port_stops_it_cleanly(tmp_path):
    """scripts/start.sh itself, over the installed environment (so no download): it says it is starting,
    and a busy port ends in the one line, exit status 1, no data folder."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts/start.sh", root / "scripts/start.sh")
    (root / ".venv").symlink_to(sys.prefix)  # the environment a first run would have created
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    data = tmp_path / "data"
    try:
        out = subprocess.run(["bash", str(root / "scripts/start.sh"), "--port", str(port), "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        busy.close()
    assert "start.sh: Starting Leukoscope" in out.stdout, out.stdout
    assert out.returncode == 1 and out.stderr.strip().count("\n") == 0 and f"port {port}" in out.stderr, out.stderr
    assert not data.exists()


# -- 5: the operator's capture before the crowd -----------------------------------------------------

def _slow_analysis(rt, seconds: float):
    real = rt.analyzer.analyze

    def analyze(*a, **kw):
        time.sleep(seconds)
        return real(*a, **kw)

    rt.analyzer.analyze = analyze


def test_item5_pages_and_exports_wait_for_the_capture_in_progress(live_app, monkeypatch):
    """An export asked for while the operator's capture runs starts after it (the capture gets the CPU);
    /health does not wait."""
    import threading

    import requests

    import device.web
    from device.records import samples as records

    monkeypatch.setattr(device.web, "CAPTURE_FIRST_WAIT_S", 10.0, raising=False)  # the bound is not tested here
    base, app, rt, _ = live_app
    s = signed_in(base)
    sid = records.create_sample(rt.store, "OPERATOR", "admin")
    token = csrf_of(s.get(base + f"/samples/{sid}").text)
    rt.loop.capture(sid, "admin")
    _slow_analysis(rt, 1.0)
    done = {}

    def operator():
        r = s.post(base + f"/samples/{sid}/capture", headers={"X-CSRFToken": token, "Accept": "application/json"})
        done["capture"] = (r.status_code, time.monotonic())

    t = threading.Thread(target=operator)
    t.start()
    wait_until(lambda: rt.loop.busy, "the operator's capture to start")
    viewer = requests.Session()
    viewer.cookies.update(s.cookies)
    t0 = time.monotonic()
    assert requests.get(base + "/health").ok and time.monotonic() - t0 < 0.5  # the box's pulse never waits
    page = viewer.get(base + f"/samples/{sid}/cells.csv")
    page_done = time.monotonic()
    joined([t])
    assert page.ok and done["capture"][0] == 200
    assert page_done >= done["capture"][1] - 0.05, "the export ran alongside the operator's capture"


def test_item5_the_operators_capture_goes_before_queued_uploads(page_app):
    import threading

    from device.records import samples as records
    from device.imageio import decode_image

    base, app, rt, _ = page_app
    sid = records.create_sample(rt.store, "ORDER", "admin")
    field = decode_image((REPO / "device/assets/fields/BloodImage_00000.jpg").read_bytes())
    _slow_analysis(rt, 0.4)
    finished = []

    def job(kind):
        rt.loop.capture(sid, "admin", image=field if kind.startswith("upload") else None, source=kind)
        finished.append(kind)

    threads = [threading.Thread(target=job, args=(f"upload-{i}",)) for i in range(3)]
    for i, t in enumerate(threads):  # one at a time, so that they queue in order
        t.start()
        wait_until(lambda: rt.loop.busy and rt.loop.state()["queued"] == i, f"upload-{i} to be running or queued")
    # the first upload is running, two are queued
    cam = threading.Thread(target=job, args=("camera",))
    cam.start()
    joined(threads + [cam])
    assert finished.index("camera") <= 1, finished  # before: last, behind every queued upload


@pytest.mark.bench
def test_item5_operator_mix_bench_fast_mode():
    from tests.test_bench import run_bench

    r = run_bench("bench.load", "--operator", "--clients", "4", "--seconds", "8")
    assert r["mix"] == "operator" and r["errors"] == 0, r.get("error_codes")
    op = r["operator_capture"]
    assert op["requests"] >= 3 and op["p95_ms"] >= op["p50_ms"] > 0
    assert "capture" not in r and {"page", "export", "status"} <= set(r)  # the viewers only browse and export
    assert r["target"]["operator_capture_p95_ms"] == 1000


# -- 6: a 12 MP frame ---------------------------------------------------------------------------

@pytest.mark.bench
def test_item6_a_12mp_frame_peaks_at_most_250_mb():
    from tests.test_bench import run_bench

    r = run_bench("bench.pipeline", "--size", "4056x3040", "--fields", "4", "--no-ready")
    assert r["size"] == "4056x3040" and r["fields"] == 4
    assert r["peak_rss_mb"] <= 250, r["peak_rss_mb"]  # before: 472 MB
