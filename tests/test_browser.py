"""End to end in a real headless Chromium (Debian's package, driven by Playwright)
against the real app on 127.0.0.1 with the replay camera. Screenshots of every
step at 800x480 (the box's touch screen) and at desktop size go to
test-artifacts/screenshots/."""
from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "test-artifacts" / "screenshots"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


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


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_operator_workflow_end_to_end(browser, live_app, tmp_path):
    from playwright.sync_api import expect
    from pypdf import PdfReader

    base, app, rt, _ = live_app
    ctx = browser.new_context(viewport={"width": 800, "height": 480}, accept_downloads=True)
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
    page.click("text=Sign out admin")
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
    page.click("text=Start sample")
    expect(page.locator("h1")).to_have_text("S-2026-0042")
    expect(page.locator("#camera-status")).to_contain_text("ok")
    expect(page.locator("#progress-bar")).to_have_js_property("value", 0)
    page.wait_for_timeout(1500)  # the live view's first frames
    assert page.locator("#preview").evaluate("img => img.naturalWidth") > 0, "live view shows nothing"

    # capture until the target (5 white cells); one capture by the space bar
    target = rt.config.sample.target_cells
    captures = 0
    while int(page.locator("#count").inner_text()) < target:
        assert captures < 20, "target never reached"
        if captures == 1:
            page.locator("body").press("Space")
        else:
            page.click("#capture")
        captures += 1
        expect(page.locator("#fields")).to_have_text(str(captures))
        expect(page.locator("#capture")).to_be_enabled()
        shot(page, f"800-04-capture-{captures:02d}")
    expect(page.locator("#last-field svg rect").first).to_be_visible()
    expect(page.locator("#progress-bar")).to_have_js_property("value", 1)
    n_cells = rt.store.connect().execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    assert n_cells >= target

    # review: reclassify the first cell, confirm the second
    page.click("text=Review cells")
    cards = page.locator("article.cell")
    expect(cards.first).to_be_visible()
    first = cards.nth(0)
    first.locator("select").select_option("lymphoblast")
    first.locator("button.reclassify").click()
    expect(first.locator(".label")).to_have_text("Lymphoblast")
    cards.nth(1).locator("button.confirm").click()
    page.wait_for_timeout(300)
    shot(page, "800-05-review")
    reviewed = rt.store.connect().execute(
        "SELECT operator_label FROM cells WHERE operator_label IS NOT NULL ORDER BY reviewed_at").fetchall()
    assert [r[0] for r in reviewed][0] == "lymphoblast" and len(reviewed) == 2

    # finish: the result page with counts, interval, flags and the disclaimer
    page.click("text=Back to capture")
    page.click("#finish")
    expect(page.locator("h1")).to_contain_text("Result")
    expect(page.locator(".disclaimer-box")).to_contain_text("not a diagnosis")
    expect(page.locator("ul.flags")).to_contain_text("Blast-like cells present")
    expect(page.locator("body")).to_contain_text("95 % interval")
    shot(page, "800-06-result")

    # PDF report: its text, read back with a PDF library
    with page.expect_download() as dl:
        page.click("#export-pdf")
    pdf_path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(pdf_path)
    assert dl.value.suggested_filename == "leukoscope-S-2026-0042.pdf"
    text = "\n".join(p.extract_text() for p in PdfReader(pdf_path).pages)
    for needle in ("Test Clinic Ngong", "S-2026-0042", "Amina Wanjiru", "34 / female", "admin", "Counts",
                   "Lymphoblast", "Malignant fraction", "Wilson interval", "pbc-differential",
                   "balanced accuracy", "Screening aid only, not a diagnosis"):
        assert needle in text, needle

    # CSV of all cells
    with page.expect_download() as dl:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
    assert len(rows) == n_cells
    assert sum(r["operator_label"] == "lymphoblast" for r in rows) == 1
    actions = [r[0] for r in rt.store.connect().execute("SELECT action FROM audit")]
    for a in ("create-sample", "capture", "reclassify-cell", "confirm-cell", "finish-sample", "export-pdf", "export-csv"):
        assert a in actions, a

    # history finds it by id and by flag
    page.goto(base + "/history?q=0042&flag=review")
    expect(page.locator("table.list")).to_contain_text("S-2026-0042")
    shot(page, "800-07-history")

    # the same pages at desktop size
    desk = browser.new_context(viewport={"width": 1366, "height": 860}, storage_state=ctx.storage_state())
    dpage = desk.new_page()
    sid = rt.store.connect().execute("SELECT id FROM samples").fetchone()[0]
    for name, path in (("home", "/"), ("result", f"/samples/{sid}"), ("review", f"/samples/{sid}/review"),
                       ("history", "/history"), ("settings", "/settings"), ("audit", "/audit")):
        dpage.goto(base + path)
        shot(dpage, f"desktop-{name}")
    desk.close()
    ctx.close()
    assert errors == [], errors
