"""Issue 21, items 4 and 5 against the real app (in process): a model without a blast class shows no blast fraction and says so first;
switching the model says what really happens, and a sample classified by two models shows the limits of both."""
from __future__ import annotations

import re
import time

from testkit.web import csrf_of


def switch_model(s, base, rt, stem: str) -> str:
    """Install a shipped bundle from Settings and wait until the running appliance uses it."""
    r = s.get(base + "/settings")
    r = s.post(base + "/settings/model/builtin", data={"csrf_token": csrf_of(r.text), "builtin": stem})
    assert r.ok
    t0 = time.monotonic()
    while (stem == "differential") != ("malignant" not in rt.bundle.categories):
        assert time.monotonic() - t0 < 30, "the model never switched"
        time.sleep(0.2)
    return r.text


def open_sample(s, base, code):
    r = s.get(base + "/")
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(r.text), "sample_code": code})
    return int(r.url.rstrip("/").split("/")[-1]), r


def finish(s, base, sid):
    r = s.get(f"{base}/samples/{sid}/finish")
    return s.post(f"{base}/samples/{sid}/finish", data={"csrf_token": csrf_of(r.text), "confirmed": "1"})


def pdf_text(s, base, sid) -> str:
    import io

    from pypdf import PdfReader

    r = s.get(f"{base}/samples/{sid}/report.pdf")
    return " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(r.content)).pages).split())


def test_a_model_without_blasts_shows_no_blast_fraction_and_says_so_first(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    page = switch_model(s, base, rt, "differential")
    # what really happens: no restart, the next field
    assert "used after the appliance restarts" not in page and "it classifies every field captured from now on" in page
    sid, _r = open_sample(s, base, "DIFF-1")
    for _ in range(2):
        rt.loop.capture(sid, "admin")
    html = finish(s, base, sid).text
    assert "Blast (malignant) fraction" not in html and "95 % interval" not in html
    first = html.index('id="no-blast-screen"')
    assert first < html.index('class="counts"') and first < html.index('class="flags"') + 2000
    assert "This model does not screen for blasts" in html[first:first + 400]
    text = pdf_text(s, base, sid)
    assert "Blast fraction" not in text and "Wilson" not in text
    # in its first lines: before the sample id
    assert text.index("This model does not screen for blasts") < text.index("Sample id")


def test_a_sample_classified_by_two_models_shows_the_limits_of_each(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    sid, r = open_sample(s, base, "TWO-1")
    rt.loop.capture(sid, "admin")
    first = rt.bundle.name
    switch_model(s, base, rt, "differential")
    rt.loop.capture(sid, "admin")
    second = rt.bundle.name
    assert first != second
    capture_page = s.get(f"{base}/samples/{sid}").text
    assert 'id="other-models"' in capture_page and first in capture_page
    html = finish(s, base, sid).text
    blocks = re.findall(r'<div class="model-limits">(.*?)</details></div>', html, re.S)
    assert len(blocks) == 2
    assert first in blocks[0] and "This result says whether the model finds blast-like cells" in blocks[0]
    assert second in blocks[1] and "This model does not screen for blasts" in blocks[1]
    # one of the two models screens for blasts: the fraction is shown, with both models' limits beside it
    assert "Blast (malignant) fraction" in html
    text = pdf_text(s, base, sid)
    assert first in text and second in text and "This model does not screen for blasts" in text
