"""Every route of the real app (in process through Flask's test client; over real HTTP where the server itself
matters: cookies, first start, live views): sign-in required, CSRF on every POST, accounts."""
from __future__ import annotations

import json
import re
import time

import requests

from testkit.web import csrf_of, signed_in

PUBLIC = {"auth.login", "auth.setup", "static", "health"}


def concrete(rule) -> str:
    """A URL for a rule, with every variable filled."""
    url = rule.rule
    for arg in rule.arguments:
        url = re.sub(rf"<(?:[a-z]+:)?{arg}>", "1" if arg not in ("fmt", "filename") else (
            "csv" if arg == "fmt" else "app.css"), url)
    return url


def test_every_route_needs_a_session_except_the_public_ones(page_app):
    base, app, rt, _ = page_app
    anon = base.session()
    assert "/login" in anon.get(base + "/").url  # an administrator exists, so the login page is the gate
    rules = [r for r in app.url_map.iter_rules()]
    assert len(rules) > 20
    for rule in rules:
        url = base + concrete(rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            resp = anon.request(method, url, allow_redirects=False)
            if rule.endpoint in PUBLIC:
                assert resp.status_code < 500, (rule, method, resp.status_code)
                continue
            if method == "GET":
                assert resp.status_code == 302 and "/login" in resp.headers["Location"], (rule.rule, resp.status_code)
            else:  # a POST without a token is refused before anything else
                assert resp.status_code in (302, 400), (rule.rule, method, resp.status_code)
                assert resp.status_code == 400 or "/login" in resp.headers["Location"]


def test_every_post_without_csrf_token_is_refused(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    posts = [r for r in app.url_map.iter_rules() if "POST" in r.methods]
    assert len(posts) >= 8
    for rule in posts:
        resp = s.post(base + concrete(rule), data={"label": "lymphocyte", "sample_code": "X"}, allow_redirects=False)
        assert resp.status_code == 400, (rule.rule, resp.status_code)
        assert "expired or was not sent by this page" in resp.text


def test_first_start_then_operators_then_lockout(live_app):
    base, app, rt, _ = live_app
    r = requests.get(base + "/", allow_redirects=True)
    assert r.url.endswith("/setup") and "Create the administrator" in r.text
    admin = signed_in(base, "admin", "correct-horse-9")
    page = admin.get(base + "/users")
    r = admin.post(base + "/users", data={"csrf_token": csrf_of(page.text), "username": "nurse.amina",
                                          "password": "short", "confirm": "short", "role": "operator"})
    assert r.status_code == 400 and "at least 8 characters" in r.text
    r = admin.post(base + "/users", data={"csrf_token": csrf_of(page.text), "username": "nurse.amina",
                                          "password": "long-enough-1", "confirm": "long-enough-1", "role": "operator"})
    assert r.ok and "nurse.amina" in r.text
    # a second setup is impossible once an administrator exists
    assert requests.get(base + "/setup").url.endswith("/login")
    op = signed_in(base, "nurse.amina", "long-enough-1", create=False)
    assert op.get(base + "/users", allow_redirects=False).status_code == 403
    assert op.get(base + "/settings", allow_redirects=False).status_code == 403
    # five wrong passwords lock the account, even against the right one
    s = requests.Session()
    for _ in range(5):
        page = s.get(base + "/login")
        r = s.post(base + "/login", data={"csrf_token": csrf_of(page.text), "username": "nurse.amina",
                                          "password": "wrong-password"})
        assert r.status_code == 401
    page = s.get(base + "/login")
    r = s.post(base + "/login", data={"csrf_token": csrf_of(page.text), "username": "nurse.amina",
                                      "password": "long-enough-1"})
    assert r.status_code == 401 and "locked" in r.text
    rows = rt.store.connect().execute("SELECT action, detail FROM audit WHERE action = 'login-failed'").fetchall()
    # six failures (five wrong, one refused as locked) aggregated into one audit row for the interval
    assert len(rows) == 1
    detail = json.loads(rows[0]["detail"])
    assert detail["attempts"] == 6 and detail["reasons"] == ["locked", "wrong"]


def test_session_cookie_flags_and_logout(live_app):
    base, app, rt, _ = live_app
    signed_in(base)
    s = requests.Session()
    page = s.get(base + "/login")
    r = s.post(base + "/login", data={"csrf_token": csrf_of(page.text), "username": "admin",
                                      "password": "correct-horse-9"}, allow_redirects=False)
    assert r.status_code == 302
    set_cookie = r.headers["Set-Cookie"]
    assert set_cookie.startswith("leukoscope_session=")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    page = s.get(base + "/")
    r = s.post(base + "/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.url.endswith("/login")
    assert s.get(base + "/history", allow_redirects=False).status_code == 302


def test_headers_and_no_external_assets(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    r = s.get(base + "/")
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY"
    for page in ("/", "/history", "/settings", "/users", "/audit"):
        html = s.get(base + page).text
        assert not re.search(r'(src|href)="(https?:)?//', html), page  # nothing from the internet


def _stream_opener(base: str, session):
    """Opens /preview.mjpg on a raw socket (so the test decides when the viewer goes): (socket, response head)."""
    import socket

    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    host, port = base.split("//")[1].split(":")

    def open_stream():
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.sendall(f"GET /preview.mjpg HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        return sock, head.decode("latin-1")

    return open_stream


def test_live_views_are_limited_and_released(live_app):
    base, app, rt, _ = live_app
    s = signed_in(base)
    open_stream = _stream_opener(base, s)

    streams = [open_stream() for _ in range(3)]
    assert all("multipart/x-mixed-replace" in h for _, h in streams)
    r = s.get(base + "/preview.mjpg", timeout=10)  # a fourth viewer gets a still frame
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"
    assert s.get(base + "/api/status", timeout=5).status_code == 200  # the server still answers
    for sock, _ in streams:
        sock.close()
    deadline = time.monotonic() + 10
    while True:  # closed streams give their places back
        sock, head = open_stream()
        sock.close()
        if "multipart/x-mixed-replace" in head:
            break
        assert time.monotonic() < deadline


def test_login_redirects_only_within_the_appliance():
    from device.web.auth import safe_next

    assert safe_next("/history?q=1") == "/history?q=1"
    for bad in ("//evil.example", "/\\evil.example", "https://evil.example", "javascript:alert(1)", "evil", ""):
        assert safe_next(bad) is None, bad


def test_only_one_first_administrator(tmp_path):
    from device.records.store import Store
    from device.web.auth import create_first_admin

    store = Store(tmp_path)
    assert create_first_admin(store, "first", "password-1") is not None
    assert create_first_admin(store, "second", "password-2") is None
    assert [r[0] for r in store.connect().execute("SELECT username FROM users")] == ["first"]


def test_a_stalled_camera_s_live_views_still_give_their_places_back(live_app):
    """A live view waits for a new frame; a camera that sends none never wrote again, so a viewer who had gone
    kept a server thread to the stream's end (300 s). The last frame is now repeated every few seconds, and the
    failed write frees the place."""
    base, app, rt, _ = live_app
    s = signed_in(base)
    open_stream = _stream_opener(base, s)

    streams = [open_stream() for _ in range(3)]
    assert all("multipart/x-mixed-replace" in h for _, h in streams)
    for sock, _ in streams:
        sock.recv(65536)  # each has its first frame
    rt.loop.stop()  # no new frame from here on: the stall
    for sock, _ in streams:
        sock.close()
    deadline = time.monotonic() + 20
    while True:
        sock, head = open_stream()
        sock.close()
        if "multipart/x-mixed-replace" in head:
            break
        assert time.monotonic() < deadline, "a stalled camera's closed live views kept their places"
        time.sleep(0.5)
