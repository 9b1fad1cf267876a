"""Issue 21, items 11, 12, 13 and 15 through the real app (in process): translated upload refusals, audit paging and search, a backup
from the page, and the small wording faults."""
from __future__ import annotations

import io
import tarfile

from testkit.web import csrf_of


def set_language(s, base, lang):
    r = s.get(base + "/account")
    assert s.post(base + "/account", data={"csrf_token": csrf_of(r.text), "action": "language",
                                           "language": lang}).ok


def test_upload_refusals_are_in_the_page_language(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    set_language(s, base, "fr")
    r = s.get(base + "/")
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(r.text), "sample_code": "UPL-FR"})
    sid = int(r.url.rstrip("/").split("/")[-1])
    r = s.post(f"{base}/samples/{sid}/upload", data={"csrf_token": csrf_of(r.text)},
               files={"image": ("notes.txt", b"hello, not a picture", "text/plain")})
    assert r.status_code == 415
    assert "notes.txt" in r.text and "pas un fichier image" in r.text and "not an image file" not in r.text


def test_the_audit_log_pages_and_searches(page_app, admin):
    from device.records import samples as records

    base, app, rt, _ = page_app
    s = admin
    for i in range(230):
        rt.store.audit("robot", "test-entry", f"thing:{i}", {"n": i})
    rt.store.audit("robot", "needle-action", "thing:needle")
    page = s.get(base + "/audit").text
    assert page.count('<td translate="no">test-entry</td>') + page.count("needle-action</td>") == 100
    assert "older ones exist" in page and 'id="older"' in page
    older = page.split('id="older" href="')[1].split('"')[0].replace("&amp;", "&")
    page2 = s.get(base + older).text
    assert "thing:130" in page2 or "thing:129" in page2  # the next hundred, not the same
    assert "thing:229" not in page2
    found = s.get(base + "/audit", params={"q": "needle"}).text
    assert "needle-action" in found and "test-entry" not in found and "there are no older ones" in found
    assert len(records.recent_audit(rt.store, 10, text="needle")) == 1


def test_the_administrator_downloads_a_backup_and_sees_when(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    r = s.get(base + "/")
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(r.text), "sample_code": "BK-1"})
    sid = int(r.url.rstrip("/").split("/")[-1])
    rt.loop.capture(sid, "admin")
    page = s.get(base + "/settings").text
    assert "No backup has been made from this page yet." in page
    r = s.post(base + "/backup.tar.gz", data={"csrf_token": csrf_of(page)})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = tar.getnames()
        assert "leukoscope-backup/leukoscope.db" in names and "leukoscope-backup/leukoscope-backup.json" in names
        assert not any(n.endswith("secret_key") for n in names)
        images = [n for n in names if n.endswith(".jpg")]
        n_files = rt.store.connect().execute("SELECT (SELECT COUNT(*) FROM fields) + (SELECT COUNT(*) FROM cells)"
                                             ).fetchone()[0]
        assert len(images) == n_files
    page = s.get(base + "/settings").text
    assert "Last backup:" in page and "by admin" in page
    # an operator cannot
    assert "backup-downloaded" in [r[0] for r in rt.store.connect().execute("SELECT action FROM audit")]


def test_small_wording_faults(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    page = s.get(base + "/settings").text
    # versions once, languages by name
    v = rt.bundle.metadata["version"]  # the bundle's name already carries its version
    assert f"{rt.bundle.name} {v}" not in page and rt.bundle.name in page
    assert ">Français</option>" in page and ">العربية</option>" in page
    # saving without a change says so
    from testkit.web import csrf_of as token
    import re

    form = {"csrf_token": token(page)}
    for name, value in re.findall(r'<input name="([a-z_]+\.[a-z_]+)" value="([^"]*)"', page):
        form[name] = value.replace("&#39;", "'").replace("&amp;", "&")
    for name, opts in re.findall(r'<select name="([a-z_]+\.[a-z_]+)">(.*?)</select>', page, re.S):
        form[name] = re.search(r'<option value="([^"]*)"[^>]*selected', opts).group(1)
    form["flags_toml"] = re.search(r'<textarea name="flags_toml"[^>]*>(.*?)</textarea>', page, re.S).group(1) \
        .replace("&#34;", '"').replace("&quot;", '"').replace("&amp;", "&").replace("&#39;", "'")
    r = s.post(base + "/settings", data=form)
    assert "Nothing changed" in r.text and "Settings saved" not in r.text
    # a refused time zone is named as the page labels it
    r = s.post(base + "/settings", data=form | {"web.time_zone": "Mars/Olympus", "csrf_token": token(r.text)})
    assert r.status_code == 400
    assert "Time zone (e.g. Africa/Nairobi): unknown time zone &#39;Mars/Olympus&#39;" in r.text
    assert "[web]" not in r.text
    # an age of 250 is refused; an age is shown with its unit
    r = s.get(base + "/")
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(r.text), "sample_code": "AGE-1", "patient_age": "250"})
    assert "from 0 to 120" in r.text
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(r.text), "sample_code": "AGE-2", "patient_age": "7",
                                        "patient_sex": "female"})
    sid = int(r.url.rstrip("/").split("/")[-1])
    rt.loop.capture(sid, "admin")
    r = s.get(f"{base}/samples/{sid}/finish")
    html = s.post(f"{base}/samples/{sid}/finish", data={"csrf_token": csrf_of(r.text), "confirmed": "1"}).text
    assert "7 years · female" in html
    # the QC banner does not repeat itself
    assert "Fix it, then capture again" not in s.get(f"{base}/samples/{sid}").text
