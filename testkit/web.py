"""HTTP helpers over real 127.0.0.1: the CSRF token of a page, a signed-in session, the real app served in
this process by waitress."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from testkit import REPO


@contextmanager
def serving(tmp_path: Path, **settings):
    """The real app and runtime, served by waitress on 127.0.0.1 in this process:
    yields (base URL, app, runtime). Replay camera over a copy of the bundled fields."""
    import shutil
    import threading

    import waitress

    from device.config import AppConfig
    from device.box.runtime import build_runtime
    from device.web import create_app

    cfg = AppConfig()
    cfg.storage.data_dir = str(settings.get("data_dir", tmp_path / "data"))
    shutil.copytree(REPO / "device/assets/fields", tmp_path / "fields")
    cfg.camera.folder = str(tmp_path / "fields")
    cfg.sample.target_cells = settings.get("target_cells", 5)
    cfg.web.clinic_name = settings.get("clinic_name", "Test Clinic Ngong")
    rt = build_runtime(cfg)
    app = create_app(rt)
    # poll, as the box serves (device/box/serve.py): select() cannot watch a descriptor numbered above 1024
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8, asyncore_use_poll=True)
    closing = threading.Event()

    def serve():
        try:
            server.run()
        except OSError:
            if not closing.is_set():  # closing from another thread can wake select() on a closed socket
                raise

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}", app, rt
    finally:
        closing.set()
        server.close()
        # close() of a one-socket waitress server leaves its worker threads waiting for work, each holding
        # its SQLite connections: ~17 descriptors a test, until the select() of a later server failed
        server.task_dispatcher.shutdown(timeout=5)
        thread.join(3)  # a daemon thread: an open live-view socket may keep its loop alive a little
        rt.stop()


def csrf_of(html: str) -> str:
    import re

    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def signed_in(base: str, username: str = "admin", password: str = "correct-horse-9", create: bool = True):
    """A requests session signed in over real HTTP (creating the administrator on first start)."""
    import requests

    s = requests.Session()
    r = s.get(base + "/")
    if create and r.url.endswith("/setup"):
        r = s.post(base + "/setup", data={"csrf_token": csrf_of(r.text), "username": username,
                                          "password": password, "confirm": password})
        assert r.ok, r.text
        return s
    r = s.get(base + "/login")
    r = s.post(base + "/login", data={"csrf_token": csrf_of(r.text), "username": username, "password": password})
    assert r.ok and "/login" not in r.url, r.text[:500]
    return s
