"""Languages: complete catalogues, no untranslated string on any page in French, Arabic right to left."""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser

import pytest

from testkit.web import csrf_of, signed_in

STOPWORDS = {"the", "and", "with", "your", "this", "these", "of", "is", "are", "has", "not", "cell", "cells",
             "sample", "samples", "field", "fields", "left", "shown", "target", "reached", "user", "password",
             "sign", "review", "finish", "choose", "confirm", "back", "uncertain", "result"}
ATTRS = ("placeholder", "aria-label", "alt", "title")


class _Texts(HTMLParser):
    """Visible text and human-read attributes, skipping scripts, styles and anything marked translate="no"."""

    def __init__(self):
        super().__init__()
        self.stack, self.texts = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        skip = tag in ("script", "style") or a.get("translate") == "no" or (self.stack and self.stack[-1])
        if tag not in ("input", "meta", "link", "img", "br", "hr", "source"):
            self.stack.append(bool(skip))
        if not skip:
            self.texts += [a[k] for k in ATTRS if a.get(k)]
            self.texts += [v for k, v in a.items() if k.startswith("data-msg-") and v]

    def handle_endtag(self, tag):
        if tag not in ("input", "meta", "link", "img", "br", "hr", "source") and self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if data.strip() and not (self.stack and self.stack[-1]):
            self.texts.append(" ".join(data.split()))


def texts_of(html: str) -> list[str]:
    p = _Texts()
    p.feed(html)
    return p.texts


def english_msgids() -> list[str]:
    from babel.messages.pofile import read_po

    from scripts.i18n import TRANSLATIONS

    with open(TRANSLATIONS / "fr" / "LC_MESSAGES" / "messages.po", "rb") as fh:
        cat = read_po(fh)
    out = []
    for m in cat:
        ids = [m.id] if isinstance(m.id, str) else list(m.id)
        strings = [m.string] if isinstance(m.string, str) else list(m.string)
        for i in ids:
            if i and i not in strings:
                out.append(i)
    return out


def _key(v):
    return v if isinstance(v, str) else tuple(v)


def test_catalogues_are_complete_and_compiled():
    from babel.messages.mofile import read_mo

    from scripts.i18n import TRANSLATIONS, missing

    assert missing("fr") == [] and missing("ar") == []
    for lang in ("fr", "ar"):
        with open(TRANSLATIONS / lang / "LC_MESSAGES" / "messages.mo", "rb") as fh:
            mo = {_key(m.id): _key(m.string) for m in read_mo(fh) if m.id}
        from babel.messages.pofile import read_po

        with open(TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po", "rb") as fh:
            po = {_key(m.id): _key(m.string) for m in read_po(fh) if m.id and m.string and not m.fuzzy
                  and (isinstance(m.string, str) or all(m.string))}
        assert {k: v for k, v in mo.items() if k in po} == po, f"{lang}: run scripts/i18n.py compile"


def _set_language(s, base, lang):
    page = s.get(base + "/account")
    r = s.post(base + "/account", data={"csrf_token": csrf_of(page.text), "action": "language", "language": lang})
    assert r.ok


def _pages(base, s, rt):
    """Every page of the workflow: an open sample with cells, one finished, plus the admin pages."""
    page = s.get(base + "/")
    tok = csrf_of(page.text)
    r = s.post(base + "/samples", data={"csrf_token": tok, "sample_code": "ÉCH-1", "patient_name": "Aïcha Diallo"})
    open_id = int(r.url.rstrip("/").split("/")[-1])
    for _ in range(2):
        s.post(f"{base}/samples/{open_id}/capture", headers={"X-CSRFToken": tok, "Accept": "application/json"})
    conn = rt.store.connect()
    cid = conn.execute("SELECT id FROM cells WHERE sample_id = ? ORDER BY id", (open_id,)).fetchone()[0]
    conn.execute("UPDATE cells SET flag = 'low-confidence' WHERE id = ?", (cid,))
    r = s.post(base + "/samples", data={"csrf_token": tok, "sample_code": "ÉCH-2", "patient_name": "Jean Mbarga"})
    fin_id = int(r.url.rstrip("/").split("/")[-1])
    s.post(f"{base}/samples/{fin_id}/capture", headers={"X-CSRFToken": tok, "Accept": "application/json"})
    s.post(f"{base}/samples/{fin_id}/finish", data={"csrf_token": tok, "confirmed": "1"})
    dup = s.post(base + "/samples", data={"csrf_token": tok, "sample_code": "ÉCH-2"})
    assert dup.status_code == 409
    paths = ["/", f"/samples/{open_id}", f"/samples/{open_id}/review", f"/samples/{open_id}/finish",
             f"/samples/{fin_id}", f"/samples/{fin_id}/review", "/history", "/history?flag=insufficient",
             "/users", "/settings", "/audit", "/account", "/nowhere"]
    pages = {p: s.get(base + p).text for p in paths}
    pages["duplicate"] = dup.text
    js = s.post(f"{base}/samples/{open_id}/capture", headers={"X-CSRFToken": tok, "Accept": "application/json"}).json()
    pages["capture-json"] = js["count_html"] + js["qc_html"]
    anon = base.session()
    pages["/login"] = anon.get(base + "/login", headers={"Accept-Language": "fr"}).text
    return pages, open_id, fin_id


def test_no_page_has_an_untranslated_string_in_french(blank_page_app):
    base, app, rt, _ = blank_page_app
    setup = base.session().get(base + "/setup", headers={"Accept-Language": "fr-FR,fr;q=0.9"}).text
    s = signed_in(base)
    page = s.get(base + "/users")
    s.post(base + "/users", data={"csrf_token": csrf_of(page.text), "username": "op", "password": "long-enough-1",
                                  "confirm": "long-enough-1", "role": "operator"})
    op = signed_in(base, "op", "long-enough-1", create=False)
    _set_language(op, base, "fr")
    _set_language(s, base, "fr")
    pages, _, _ = _pages(base, s, rt)
    pages["/setup"] = setup
    pages["403"] = op.get(base + "/users").text
    ids = english_msgids()
    literal = [re.split(r"%\(\w+\)[sd]|%%", i) for i in ids]
    problems = []
    for path, html in pages.items():
        for text in texts_of(html):
            words = set(re.findall(r"[^\W\d_]+", text.lower()))
            if words & STOPWORDS:
                problems.append((path, text, "English word"))
            for parts in literal:  # a message's fixed text, in English, on a French page
                for part in parts:
                    part = part.strip(" .:,()")
                    if len(part) >= 12 and part in text:
                        problems.append((path, text, part))
    assert problems == [], "\n".join(map(str, sorted(set(problems))))
    assert "Aide au dépistage uniquement" in pages["/"] and 'lang="fr"' in pages["/"]


def test_the_pdf_report_in_french_and_arabic(page_app, admin):
    from pypdf import PdfReader

    base, app, rt, _ = page_app
    s = admin
    _set_language(s, base, "fr")
    _, open_id, fin_id = _pages(base, s, rt)
    text = " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(
        s.get(f"{base}/samples/{fin_id}/report.pdf").content)).pages).split())
    for needle in ("Rapport de dépistage", "Globules blancs comptés", "Insuffisant", "Validé par",
                   "Aide au dépistage uniquement, pas un diagnostic", "Jamais validé sur"):
        assert needle in text, needle
    _set_language(s, base, "ar")
    pdf = PdfReader(io.BytesIO(s.get(f"{base}/samples/{fin_id}/report.pdf").content))
    fonts = " ".join(str(p["/Resources"]["/Font"][k].get_object()["/BaseFont"]) for p in pdf.pages
                     for k in p["/Resources"]["/Font"])
    assert "NotoSansArabic" in fonts  # Arabic text set in a font that has its glyphs


@pytest.mark.parametrize("lang,rtl", [("ar", True), ("en", False)])
def test_arabic_pages_are_right_to_left(page_app, admin, lang, rtl):
    base, app, rt, _ = page_app
    s = admin
    _set_language(s, base, lang)
    html = s.get(base + "/").text
    assert (f'lang="{lang}" dir="rtl"' in html) == rtl
    if rtl:
        assert "عينة جديدة" in html and "أداة مساعدة للفحص فقط" in html
