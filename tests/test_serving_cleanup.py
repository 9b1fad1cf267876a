"""The in-process server the page tests use (testkit.web.serving) gives back what it took: its waitress worker
threads and their SQLite connections. It once kept eight threads and ~17 descriptors a test; some sixty tests
later a server's select() met a descriptor above 1024, its loop died and every later page test timed out."""
from __future__ import annotations

import gc
import os
import threading

import requests

from testkit.web import serving


def _db_descriptors() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += "leukoscope.db" in os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return n


def test_serving_leaves_no_thread_and_no_database_descriptor_behind(tmp_path):
    gc.collect()
    threads, dbs = threading.active_count(), _db_descriptors()
    for i in range(3):
        with serving(tmp_path / str(i)) as (base, app, rt):
            # every worker thread answers at least once, each opening its own connection
            for _ in range(12):
                assert requests.get(base + "/login", timeout=10).status_code == 200
    gc.collect()
    assert threading.active_count() == threads, [t.name for t in threading.enumerate()]
    assert _db_descriptors() == dbs
