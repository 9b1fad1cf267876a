"""HTTP helpers: the CSRF token of a page, a signed-in session, the real app served in this process by waitress on
127.0.0.1, and a requests-like session over Flask's test client for the in-process page tests."""
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
    try:
        app = create_app(rt)
        server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8,
                                        asyncore_use_poll=True)  # as the box: select() stops at descriptor 1024
    except BaseException:
        rt.stop()
        raise
    closing = threading.Event()

    def serve():
        try:
            server.run()
        except OSError:
            if not closing.is_set():  # closing from another thread can wake select() on a closed socket
                raise

    thread = threading.Thread(target=serve, daemon=True, name=f"waitress-{server.effective_port}")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}", app, rt
    finally:
        closing.set()
        try:
            stop_server(server, thread)
        finally:
            rt.stop()


def stop_server(server, thread, timeout: float = 5.0) -> None:
    """Stop a waitress server run on ``thread``. Its loop runs while any connection is open, and a client's
    kept-alive connection never closes by itself: so close them all, then stop its workers, then close the
    listener -- the closing done in the loop's own thread, so that no socket is closed under its select().
    (Closing only the listener leaked the loop, eight workers and the whole app with its runtime and
    model -- about 30 MB -- per test.) Fails, naming the thread, if the loop has not ended in time."""
    import threading

    def in_loop(action) -> None:
        done = threading.Event()

        def thunk():
            try:
                action()
            finally:
                done.set()

        server.trigger.pull_trigger(thunk)
        assert done.wait(timeout), f"{thread.name}: the server loop did not answer within {timeout} s"

    def close_connections():
        for channel in list(server._map.values()):
            if channel is not server and channel is not server.trigger:
                channel.close()  # a live view's worker then fails its next write and ends

    if thread.is_alive():
        in_loop(close_connections)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
    if thread.is_alive():
        in_loop(server.close)  # the listener and the trigger: the loop's map is empty, the loop returns
    else:
        server.close()
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread.name}: the server loop did not stop within {timeout} s of closing"


def csrf_of(html: str) -> str:
    import re

    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def signed_in(base: str, username: str = "admin", password: str = "correct-horse-9", create: bool = True):
    """A requests session signed in over real HTTP (creating the administrator on first start); on an
    ``InProcessBase`` the same real pages answered in process."""
    import requests

    s = base.session() if isinstance(base, InProcessBase) else requests.Session()
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


# -- in process -----------------------------------------------------------------------------------------
IN_PROCESS = "http://localhost"  # the base URL of an app answered by Flask's test client


class InProcessBase(str):
    """The base URL of an app answered in process (``IN_PROCESS``), carrying the app: ``signed_in`` and
    ``session()`` give clients of it, so a page test reads the same on either transport."""

    def __new__(cls, app):
        base = super().__new__(cls, IN_PROCESS)
        base.app = app
        return base

    def session(self) -> "InProcessSession":
        return InProcessSession(self.app)


class InProcessResponse:
    """The parts of a ``requests.Response`` the tests read, over a Werkzeug test response."""

    def __init__(self, resp):
        self._resp = resp
        self.status_code = resp.status_code
        self.headers = resp.headers  # case-insensitive, like requests'
        self.content = resp.get_data()
        self.url = resp.request.url  # after redirects: the page the client ended on
        self.history = list(getattr(resp, "history", ()))

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def text(self) -> str:
        return self.content.decode(self._resp.mimetype_params.get("charset", "utf-8"), errors="replace")

    def json(self):
        import json

        return json.loads(self.content)


class InProcessSession:
    """A ``requests.Session``-like client for the real app answered in this process by Flask's test
    client (the Flask tutorial's ``client``): the same calls the real-HTTP tests make on a base URL, with
    the session cookie kept between them, but no server, socket or thread. ``timeout`` is accepted and
    ignored (nothing here can block on a network); streaming and concurrency need the real server."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def request(self, method: str, url: str, params=None, data=None, files=None, json=None, headers=None,
                allow_redirects: bool = True, timeout=None) -> InProcessResponse:
        import io

        path = url[len(IN_PROCESS):] if url.startswith(IN_PROCESS) else url
        assert path.startswith("/"), f"not a URL of the in-process app: {url}"
        if files:
            form = dict(data or {})
            for name, spec in files.items():  # requests' (filename, content[, type]) to Werkzeug's
                filename, content, *ctype = spec if isinstance(spec, tuple) else (name, spec)
                stream = io.BytesIO(content) if isinstance(content, (bytes, bytearray)) else content
                form[name] = (stream, filename, *ctype[:1])
            data = form
        resp = self.client.open(path, method=method.upper(), query_string=params, data=data, json=json,
                                headers=headers, follow_redirects=allow_redirects)
        return InProcessResponse(resp)

    def get(self, url, **kw):
        return self.request("GET", url, **kw)

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def cookie(self, name: str = "leukoscope_session") -> str | None:
        c = self.client.get_cookie(name)
        return None if c is None else c.value

    def set_cookie(self, value: str, name: str = "leukoscope_session") -> None:
        self.client.set_cookie(name, value)
