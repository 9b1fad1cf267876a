"""The test harness itself: a served app must leave nothing behind. Each leaked server kept its loop, eight
workers, about 14 file descriptors and 30 MB; past 1024 descriptors waitress's select() fails and every later
real-HTTP test hung until its time-out (the CI run that never finished)."""
from __future__ import annotations

import gc
import os
import threading

import requests

from testkit import wait_until
from testkit.web import InProcessBase, csrf_of, serving, signed_in


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_served_app_leaves_no_thread_or_descriptor_behind(tmp_path):
    threads0, fds0 = set(threading.enumerate()), _fds()
    with serving(tmp_path) as (base, app, rt):
        s = signed_in(base)  # its connection is kept alive, as every requests.Session's is
        assert s.get(base + "/history").ok
        for _ in range(12):  # fresh connections: every worker thread answers, each opening its SQLite connection
            assert requests.get(base + "/login", timeout=10).status_code == 200
        live = s.get(base + "/preview.mjpg", stream=True, timeout=10)  # and a live view left open
        assert live.headers["Content-Type"].startswith("multipart/x-mixed-replace")
    live.close()
    s.close()
    gc.collect()
    left = lambda: [t.name for t in set(threading.enumerate()) - threads0 if t.is_alive()]  # noqa: E731
    wait_until(lambda: not left(), "the server's threads to end", timeout=10)
    assert len(_fds() - fds0) <= 1, sorted(_fds() - fds0)  # one may be a descriptor reused by the interpreter


def test_the_in_process_client_reads_like_requests(page_app, admin, client):
    base, app, rt, _ = page_app
    assert isinstance(base, InProcessBase)
    r = client.get(base + "/history")  # anonymous: sent to the sign-in page, the final URL reported
    assert r.ok and "/login" in r.url and 'name="password"' in r.text
    r = client.get("/history", allow_redirects=False)
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    r = admin.get(base + "/history")
    assert r.status_code == 200 and r.url.endswith("/history")
    # a form post that redirects, then an upload in requests' (filename, bytes, type) form: refused as text
    r = admin.post(base + "/samples", data={"csrf_token": csrf_of(admin.get("/").text), "sample_code": "IP-1"})
    assert r.ok and "/samples/" in r.url
    sid = int(r.url.rstrip("/").split("/")[-1])
    r = admin.post(f"{base}/samples/{sid}/upload", data={"csrf_token": csrf_of(r.text)},
                   files={"image": ("notes.txt", b"not a picture", "text/plain")})
    assert r.status_code == 415 and "notes.txt" in r.text
