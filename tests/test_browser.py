"""End to end in a real headless Chromium (Debian's package, driven by Playwright)
against the real app on 127.0.0.1 with the replay camera. Screenshots of every
step at 800x480 (the box's touch screen) and at 1366x768 go to
test-artifacts/screenshots/, with the PDF report's pages rendered to PNG beside them."""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from pathlib import Path

import pytest

from testkit import REPO

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SMALL = {"width": 800, "height": 480}
DESK = {"width": 1366, "height": 768}


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def shot(page, name, full=True):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full)


def above_fold(page, selector):
    """A primary action must be visible without scrolling on the 800x480 screen."""
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator(selector).first.bounding_box()
    assert box is not None, selector
    height = page.viewport_size["height"]
    assert box["y"] >= 0 and box["y"] + box["height"] <= height, (selector, box, page.url)


def pdf_pages(pdf_path: Path, prefix: str) -> list[Path]:
    """The report's pages as PNG (poppler's pdftoppm), to be looked at."""
    pdftoppm = shutil.which("pdftoppm")
    if pdftoppm is None:
        pytest.fail("pdftoppm is not installed: scripts/test.sh installs it (apt-get install poppler-utils)")
    for old in SHOTS.glob(f"{prefix}-*.png"):
        old.unlink()
    subprocess.run([pdftoppm, "-r", "70", "-png", str(pdf_path), str(SHOTS / prefix)], check=True, timeout=60)
    pngs = sorted(SHOTS.glob(f"{prefix}-*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)  # rendered pages, not blanks
    return pngs


def download(page, selector, tmp_path) -> Path:
    with page.expect_download() as dl:
        page.click(selector)
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    return path


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return " ".join(" ".join(p.extract_text() for p in PdfReader(path).pages).split())


def ensure_uncertain(rt, sample_id):
    """The replay fields may all be classified confidently: mark one cell uncertain, as the model would."""
    conn = rt.store.connect()
    if not conn.execute("SELECT 1 FROM cells WHERE sample_id = ? AND flag IS NOT NULL", (sample_id,)).fetchone():
        conn.execute("UPDATE cells SET flag = 'low-confidence' WHERE id = (SELECT MAX(id) FROM cells WHERE "
                     "sample_id = ?)", (sample_id,))


def capture_to_target(page, rt, prefix, target_text, fields_before=0):
    from playwright.sync_api import expect

    target = rt.config.sample.target_cells
    captures = 0
    above_fold(page, "#capture")
    above_fold(page, "#review-link")
    above_fold(page, "#finish")
    while int(page.locator("#count").inner_text()) < target:
        assert captures < 30, "target never reached"
        if captures == 1:
            page.locator("body").press("Space")
        else:
            page.click("#capture")
        captures += 1
        expect(page.locator("#fields")).to_have_text(str(fields_before + captures))
        expect(page.locator("#capture")).to_be_enabled()
        shot(page, f"{prefix}-04-capture-{captures:02d}", full=False)
    expect(page.locator("#target-message")).to_have_text(target_text)
    expect(page.locator("#last-field svg rect").first).to_be_visible()
    expect(page.locator("#progress-bar")).to_have_js_property("value", 1)
    above_fold(page, "#capture")
    above_fold(page, "#finish")
    return captures


def review_by_groups(page, rt, sample_id, prefix, decided_text, blast_text):
    from playwright.sync_api import expect

    ensure_uncertain(rt, sample_id)
    page.click("#review-link")
    page.wait_for_load_state()  # choosing a class below is heard once the page's script has run
    above_fold(page, "#finish")
    groups = page.locator("section.group")
    suspected = rt.store.connect().execute("SELECT 1 FROM cells WHERE sample_id = ? AND flag = 'possible-blast' AND "
                                           "operator_label IS NULL", (sample_id,)).fetchone()
    # suspected blasts first (issue 21), then the other uncertain cells
    expect(groups.first).to_have_id("group-possible-blast" if suspected else "group-uncertain")
    shot(page, f"{prefix}-05-review-groups", full=False)
    # an uncertain cell has no Confirm: it is decided by choosing a class
    card = page.locator("#group-uncertain article.cell").first
    cell_id = int(card.get_attribute("id").split("-")[1])
    assert card.locator("button.confirm").count() == 0
    card.locator("select").select_option("neutrophil")  # choosing the class is the decision (one tap)
    expect(card.locator(".label")).to_have_text(decided_text)
    # a confident cell reclassified as a blast
    other = page.locator("section.group:not(#group-uncertain) article.cell").first
    blast_id = int(other.get_attribute("id").split("-")[1])
    other.locator("select").select_option("lymphoblast")
    expect(other.locator(".label")).to_have_text(blast_text)
    shot(page, f"{prefix}-06-review-decided")
    # accept a whole confident group at once
    page.locator("form.accept button").first.click()
    expect(page.locator("p.flash").first).to_be_visible()
    shot(page, f"{prefix}-07-review-accepted", full=False)
    conn = rt.store.connect()
    assert conn.execute("SELECT operator_label FROM cells WHERE id = ?", (cell_id,)).fetchone()[0] == "neutrophil"
    assert conn.execute("SELECT operator_label FROM cells WHERE id = ?", (blast_id,)).fetchone()[0] == "lymphoblast"
    return blast_id


def test_operator_workflow_end_to_end(browser, live_app, tmp_path):
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    # Only classified cells count toward the target, and the bundled model leaves most of the
    # bundled BCCD fields' cells (another lab) for review: a small target keeps the walk short.
    rt.config.sample.target_cells = 2
    ctx = browser.new_context(viewport=SMALL, accept_downloads=True)
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    # a CSP violation or a missing resource shows up on the console: none allowed
    page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)

    # first start: create the administrator
    page.goto(base + "/")
    expect(page).to_have_url(base + "/setup")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "correct-horse-9")
    page.fill("input[name=confirm]", "correct-horse-9")
    shot(page, "800-01-setup")
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("New sample")
    # sign out and in again
    page.click("#sign-out")
    expect(page).to_have_url(base + "/login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "correct-horse-9")
    shot(page, "800-02-login")
    page.click("button[type=submit]")
    shot(page, "800-03-home")

    # new sample
    page.fill("input[name=sample_code]", "S-2026-0042")
    page.fill("input[name=patient_name]", "Amina Wanjiru")
    page.fill("input[name=patient_age]", "34")
    page.select_option("select[name=patient_sex]", "female")
    page.fill("textarea[name=note]", "fever, pallor")
    page.click("#start-sample")
    expect(page.locator("h1")).to_have_text("S-2026-0042")
    expect(page.locator("#camera-status")).to_contain_text("ok")
    expect(page.locator("#progress-bar")).to_have_js_property("value", 0)
    page.wait_for_timeout(1500)  # the live view's first frames
    assert page.locator("#preview").evaluate("img => img.naturalWidth") > 0, "live view shows nothing"
    sid = rt.store.connect().execute("SELECT id FROM samples").fetchone()[0]

    # a field that fails quality control (bare glass, uploaded): a red banner with the action to take
    import numpy as np
    from PIL import Image

    glass = tmp_path / "glass.png"
    Image.fromarray(np.full((480, 640, 3), 250, np.uint8)).save(glass)
    page.click("details.upload summary")
    page.set_input_files("input[name=image]", str(glass))
    page.click("details.upload button[type=submit]")
    expect(page.locator(".qc-fail")).to_contain_text("Field not analysed.")
    expect(page.locator(".qc-fail")).to_contain_text("photograph the field again")  # an upload: no lamp to turn
    above_fold(page, ".qc-fail")
    shot(page, "800-04-qc-failed-upload", full=False)

    # capture until the target: the count is classified white cells, the uncertain ones beside it
    capture_to_target(page, rt, "800", "Target reached: review, then finish.", fields_before=1)
    n_cells = rt.store.connect().execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    leuko = int(page.locator("#count").inner_text())
    assert n_cells >= leuko >= rt.config.sample.target_cells

    # review by groups
    blast_id = review_by_groups(page, rt, sid, "800", "Neutrophil", "Lymphoblast")

    # finish asks first
    page.click("#finish")
    expect(page.locator("h1")).to_contain_text("Finish sample S-2026-0042?")
    expect(page.locator("#finish-target")).to_contain_text("Target reached")
    expect(page.locator("#finish-unreviewed")).to_contain_text("not reviewed by a person")
    above_fold(page, "#confirm-finish")
    shot(page, "800-08-finish-confirm")
    page.fill("input[name=verified_by]", "Dr. Njeri Otieno")
    page.click("#confirm-finish")

    # the result: counts, interval, flags, the model's limits beside the blast fraction, the disclaimer
    expect(page.locator("h1")).to_contain_text("Result")
    expect(page.locator(".disclaimer-box")).to_contain_text("not a diagnosis")
    expect(page.locator("ul.flags")).to_contain_text("Blast-like cells present")
    expect(page.locator("body")).to_contain_text("95 % interval")
    expect(page.locator("#model-limits")).to_contain_text("Never validated on")
    expect(page.locator("#model-limits")).to_contain_text("Trained on")
    expect(page.locator("#model-limits")).to_contain_text("Blast operating point")
    expect(page.locator("#model-limits")).to_contain_text("AML-LMU")
    expect(page.locator("body")).to_contain_text("Verified by: Dr. Njeri Otieno")
    above_fold(page, "#export-pdf")
    shot(page, "800-09-result", full=False)
    shot(page, "800-09-result-full")

    # PDF report: its text read back, its pages rendered to PNG
    pdf = download(page, "#export-pdf", tmp_path)
    assert pdf.name == "leukoscope-S-2026-0042.pdf"
    text = pdf_text(pdf)
    for needle in ("Test Clinic Ngong", "S-2026-0042", "Amina Wanjiru", "34 years / female", "admin", "Counts",
                   "Lymphoblast", "Blast fraction", "Wilson interval", "screen 3.0", "Trained on", "On a lab it never saw, about",
                   "Never validated on", "balanced accuracy", "Blast operating point", "On a laboratory it never saw", "cells shown", "Reviewed by", "Verified by",
                   "Dr. Njeri Otieno", "Screening aid only, not a diagnosis"):
        assert needle in text, needle
    pdf_pages(pdf, "pdf-en")

    # CSV of all cells
    with page.expect_download() as dl:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert len(rows) == n_cells
    assert next(r for r in rows if int(r["cell_id"]) == blast_id)["final_label"] == "lymphoblast"

    # a finished sample's review is read-only
    page.goto(f"{base}/samples/{sid}/review")
    expect(page.locator("#read-only")).to_be_visible()
    assert page.locator("form.review").count() == 0
    shot(page, "800-10-review-read-only", full=False)

    # the administrator re-opens and amends; the result says so
    page.goto(f"{base}/samples/{sid}")
    page.fill("#reopen-form input[name=reason]", "blast recount requested")
    page.click("#reopen")
    page.wait_for_load_state()  # the page's script listens for the choice once it has run (a slow CI machine chose first)
    card = page.locator(f"#cell-{blast_id}")
    card.locator("select").select_option("lymphocyte")
    expect(card.locator(".label")).to_have_text("Lymphocyte")
    page.click("#finish")
    page.click("#confirm-finish")
    expect(page.locator("#amended")).to_contain_text("re-opened by admin")
    expect(page.locator("#amended")).to_contain_text("blast recount requested")
    shot(page, "800-11-result-amended", full=False)
    actions = [r[0] for r in rt.store.connect().execute("SELECT action FROM audit")]
    for a in ("create-sample", "capture", "reclassify-cell", "accept-class", "finish-sample", "export-pdf",
              "export-csv", "reopen-sample"):
        assert a in actions, a

    # history shows which flag
    page.goto(base + "/history?q=0042")
    expect(page.locator("table.list")).to_contain_text("S-2026-0042")
    expect(page.locator("table.list")).to_contain_text("amended")
    shot(page, "800-12-history")

    # the same in French
    page.goto(base + "/account")
    page.select_option("#language", "fr")
    page.click("#save-language")
    expect(page.locator("html")).to_have_attribute("lang", "fr")
    page.goto(base + "/")
    expect(page.locator("h1")).to_have_text("Nouvel échantillon")
    page.fill("input[name=sample_code]", "ECH-2026-0043")
    page.fill("input[name=patient_name]", "Aïcha Diallo")
    page.click("#start-sample")
    sid_fr = rt.store.connect().execute("SELECT MAX(id) FROM samples").fetchone()[0]
    expect(page.locator("#capture")).to_contain_text("Capturer")
    capture_to_target(page, rt, "fr-800", "Objectif atteint : vérifiez, puis terminez.")
    review_by_groups(page, rt, sid_fr, "fr-800", "Neutrophile", "Lymphoblaste")
    page.click("#finish")
    expect(page.locator("h1")).to_contain_text("Terminer l'échantillon ECH-2026-0043 ?")
    expect(page.locator("#finish-target")).to_contain_text("Objectif atteint")
    shot(page, "fr-800-08-finish-confirm")
    page.click("#confirm-finish")
    expect(page.locator("h1")).to_contain_text("Résultat")
    expect(page.locator("#model-limits")).to_contain_text("Jamais validé sur")
    expect(page.locator(".disclaimer-box")).to_contain_text("pas un diagnostic")
    above_fold(page, "#export-pdf")
    shot(page, "fr-800-09-result", full=False)
    pdf = download(page, "#export-pdf", tmp_path)
    text = pdf_text(pdf)
    for needle in ("Rapport de dépistage", "ECH-2026-0043", "Aïcha Diallo", "Globules blancs comptés",
                   "Proportion de blastes", "Jamais validé sur", "cellules affichées sur", "Vérifié par",
                   "Aide au dépistage uniquement, pas un diagnostic"):
        assert needle in text, needle
    pdf_pages(pdf, "pdf-fr")
    # re-open and amend in French too
    page.fill("#reopen-form input[name=reason]", "contrôle")
    page.click("#reopen")
    expect(page.locator("p.flash").first).to_contain_text("rouvert")
    page.click("#finish")
    page.click("#confirm-finish")
    expect(page.locator("#amended")).to_contain_text("rouvert par admin")

    # Arabic: right to left, the result page and the report
    page.goto(base + "/account")
    page.select_option("#language", "ar")
    page.click("#save-language")
    page.goto(f"{base}/samples/{sid}")
    expect(page.locator("html")).to_have_attribute("dir", "rtl")
    expect(page.locator("h1")).to_contain_text("النتيجة")
    above_fold(page, "#export-pdf")
    shot(page, "ar-800-09-result", full=False)
    pdf_pages(download(page, "#export-pdf", tmp_path), "pdf-ar")
    page.goto(f"{base}/samples/{sid_fr}/review")
    shot(page, "ar-800-05-review", full=False)

    # the same pages at desktop size
    desk = browser.new_context(viewport=DESK, storage_state=ctx.storage_state())
    dpage = desk.new_page()
    for lang in ("ar", "fr", "en"):
        if lang != "ar":
            dpage.goto(base + "/account")
            dpage.select_option("#language", lang)
            dpage.click("#save-language")
        for name, path in (("home", "/"), ("result", f"/samples/{sid}"), ("review", f"/samples/{sid}/review"),
                           ("history", "/history"), ("users", "/users"), ("settings", "/settings"),
                           ("audit", "/audit")):
            dpage.goto(base + path)
            shot(dpage, f"{'' if lang == 'en' else lang + '-'}1366-{name}", full=False)
        if lang == "fr":  # and the small screen's result and review in French and Arabic
            for name, path in (("result", f"/samples/{sid}"), ("review", f"/samples/{sid}/review")):
                dpage.set_viewport_size(SMALL)
                dpage.goto(base + path)
                shot(dpage, f"fr-800-{name}", full=False)
                dpage.set_viewport_size(DESK)
    desk.close()
    ctx.close()
    assert errors == [], errors
