"""Issue 21 in a real headless Chromium against the real app on 127.0.0.1 (replay camera, bundled model):
what the reviewer sees (a suspected blast is visible everywhere), what the count counts (no view twice), a review
one tap per cell, boxes on 16:9 fields, the 800x480 screen. The model's own outputs are never relied on: the
cells whose flag or probabilities matter are set in the database, as the model would write them."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from testkit import REPO

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SMALL = {"width": 800, "height": 480}
DESK = {"width": 1366, "height": 768}
FIELDS = REPO / "device" / "assets" / "fields"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def admin_page(browser, base, viewport=SMALL):
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport=viewport, accept_downloads=True)
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    if page.url.endswith("/setup"):
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", "correct-horse-9")
        page.fill("input[name=confirm]", "correct-horse-9")
        page.click("button[type=submit]")
    else:
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", "correct-horse-9")
        page.click("button[type=submit]")
    expect(page.locator("#start-sample")).to_be_visible()
    return ctx, page, errors


def new_sample(page, code, age="", note=""):
    from playwright.sync_api import expect

    page.goto(page.url.split("/samples")[0].split("/history")[0].rstrip("/") + "/")
    page.fill("input[name=sample_code]", code)
    if age:
        page.fill("input[name=patient_age]", age)
    if note:
        page.fill("textarea[name=note]", note)
    page.click("#start-sample")
    expect(page.locator("h1")).to_have_text(code)
    return int(page.url.rstrip("/").split("/")[-1])


def fields_now(page) -> int:
    return int(page.locator("#fields").inner_text())


def capture_once(page, n_before):
    from playwright.sync_api import expect

    page.click("#capture")
    expect(page.locator("#fields")).to_have_text(str(n_before + 1))
    expect(page.locator("#capture")).to_be_enabled()


def cells(rt, sid):
    return rt.store.connect().execute("SELECT * FROM cells WHERE sample_id = ? ORDER BY id", (sid,)).fetchall()


def set_cell(rt, cell_id, **values):
    conn = rt.store.connect()
    sets = ", ".join(f"{k} = ?" for k in values)
    conn.execute(f"UPDATE cells SET {sets} WHERE id = ?", (*values.values(), cell_id))


def pdf_text(path: Path) -> str:
    from pypdf import PdfReader

    return " ".join(" ".join(p.extract_text() for p in PdfReader(path).pages).split())


# ---------------------------------------------------------------------------------------------------------------
# 1. A suspected blast is visible wherever it is shown

def test_a_possible_blast_is_its_own_group_in_words_never_accepted_in_bulk_and_stays_on_the_result(
        browser, live_app, tmp_path):
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    rt.config.sample.target_cells = 1
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "PB-1")
    n = 0
    while len(cells(rt, sid)) < 2:
        capture_once(page, n)
        n += 1
        assert n < 13
    first, second = cells(rt, sid)[:2]
    probs = {"blast": 0.08, "eosinophil": 0.48, "neutrophil": 0.30, "lymphocyte": 0.14}
    set_cell(rt, first["id"], flag="possible-blast", label="eosinophil", category="normal", probability=0.48,
             probabilities_json=json.dumps(probs), operator_label=None)
    set_cell(rt, second["id"], flag=None, label="neutrophil", category="normal", probability=0.99,
             probabilities_json=json.dumps({"neutrophil": 0.99, "blast": 0.01}), operator_label=None)

    page.click("#review-link")
    groups = page.locator("section.group")
    expect(groups.first).to_have_id("group-possible-blast")  # first, before the other uncertain cells
    suspect = page.locator(f"#cell-{first['id']}")
    expect(suspect.locator(".label")).to_have_text("Possible blast")
    point = round(100 * rt.bundle.thresholds["malignant"])
    expect(suspect.locator(".suspicion")).to_have_text(
        f"Possible blast: blast probability 8 %; the model counts a blast from {point} %")
    # never in an "accept all": its group has none, and accepting the neutrophils leaves it undecided
    assert page.locator("#group-possible-blast form.accept").count() == 0
    assert page.locator("#group-possible-blast button.confirm").count() == 0
    page.locator("#group-neutrophil form.accept button").click()
    page.fill("#accept-above input[name=min_percent]", "50")
    page.click("#accept-above button")
    assert cells(rt, sid)[0]["operator_label"] is None
    # the reviewer decides it (one tap) as a neutrophil: it stays a suspected blast on the result and the report
    page.locator(f"#cell-{first['id']} button.tap[value=neutrophil]").click()
    expect(page.locator(f"#cell-{first['id']} .label")).to_have_text("Neutrophil")
    page.goto(f"{base}/samples/{sid}/finish")
    page.click("#confirm-finish")
    expect(page.locator("#possible-blasts")).to_contain_text("The model suspected 1 cell of being a blast.")
    expect(page.locator("#possible-blasts")).to_contain_text("Decided by a reviewer: Neutrophil 1")
    expect(page.locator("figure.cell", has_text="Possible blast")).to_have_count(1)
    with page.expect_download() as dl:
        page.click("#export-pdf")
    pdf = tmp_path / "pb.pdf"
    dl.value.save_as(pdf)
    text = pdf_text(pdf)
    assert "Possible blasts" in text and "1 cell suspected by the model" in text and "Neutrophil 1" in text
    assert "Possible blast: Neutrophil" in text  # its caption in the gallery
    ctx.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------------------------
# 2. No view counted twice

def test_key_repeat_and_a_triple_click_capture_one_field(browser, live_app):
    base, app, rt, _ = live_app
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "KR-1")
    page.locator("body").focus()
    # the space bar held down: the browser repeats the key (10 presses in 0.5 s)
    page.keyboard.down("Space")
    for _ in range(9):
        page.wait_for_timeout(50)
        page.keyboard.down("Space")
    page.keyboard.up("Space")
    page.wait_for_timeout(1500)
    assert len(rt.store.connect().execute("SELECT id FROM fields WHERE sample_id = ?", (sid,)).fetchall()) == 1
    # a triple click (three clicks 0.15 s apart): one field
    box = page.locator("#capture").bounding_box()
    for _ in range(3):
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_timeout(150)
    page.wait_for_timeout(1500)
    assert len(rt.store.connect().execute("SELECT id FROM fields WHERE sample_id = ?", (sid,)).fetchall()) == 2
    ctx.close()
    assert errors == [], errors


def upload(page, path):
    page.locator("details.upload").evaluate("d => d.open = true")
    page.set_input_files("input[name=image]", str(path))
    page.click("details.upload button[type=submit]")


def test_the_same_picture_twice_is_held_out_of_the_count_until_the_operator_decides(browser, live_app):
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "UP-2")
    field = FIELDS / "BloodImage_00023.jpg"
    upload(page, field)
    expect(page.locator(".qc-ok")).to_be_visible()
    counted = page.locator("#count").inner_text()
    n_cells = len(cells(rt, sid))
    assert n_cells >= 1
    upload(page, field)
    expect(page.locator("#repeat-warning")).to_contain_text("Same view as field 1: its cells are not counted.")
    expect(page.locator("#count")).to_have_text(counted)  # nothing counted twice
    expect(page.locator("#held")).to_have_text("1 repeated view not counted")
    assert len(rt.store.connect().execute("SELECT id FROM fields WHERE sample_id = ?", (sid,)).fetchall()) == 2
    from device.records import samples as records

    assert records.summary_of(rt.store, sid, rt.config.sample.flags).leukocytes + \
        records.summary_of(rt.store, sid, rt.config.sample.flags).uncertain == n_cells
    # discarding it removes it (nothing of it was counted); counting it anyway counts it, audited
    page.click("#discard-repeat")
    expect(page.locator("#held")).to_have_count(0)
    assert len(rt.store.connect().execute("SELECT id FROM fields WHERE sample_id = ?", (sid,)).fetchall()) == 1
    upload(page, field)
    page.click("#count-repeat")
    expect(page.locator("#held")).to_have_count(0)
    assert len(cells(rt, sid)) == len(records.cells_of(rt.store, sid)) == 2 * n_cells
    actions = [r[0] for r in rt.store.connect().execute("SELECT action FROM audit")]
    assert "discard-repeated-field" in actions and "count-repeated-field" in actions
    ctx.close()
    assert errors == [], errors


def test_the_replay_demo_does_not_silently_recount_its_fields(browser, live_app):
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "DEMO-1")
    n_files = len(list((Path(rt.config.camera.folder)).glob("*.jpg")))
    for _ in range(n_files - 1):  # one round of the replay folder but one, quickly
        rt.loop.capture(sid, "admin")
    page.reload()
    before = int(page.locator("#count").inner_text())
    for i in range(3):  # the round's last field, then the first ones again
        page.click("#capture")
        expect(page.locator("#fields")).to_have_text(str(n_files + i))
        expect(page.locator("#capture")).to_be_enabled()
        if page.locator("#repeat-warning").count():
            break
    expect(page.locator("#repeat-warning")).to_be_visible()
    expect(page.locator("#held")).to_be_visible()
    summary_cells = sum(1 for c in cells(rt, sid))
    from device.records import samples as records

    assert len(records.cells_of(rt.store, sid)) < summary_cells  # the repeat's cells are in no count
    assert int(page.locator("#count").inner_text()) >= before
    ctx.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------------------------
# 3. "Not a white cell / fragment" leaves every count

def test_not_a_white_cell_removes_a_cell_from_every_count(browser, live_app, tmp_path):
    from playwright.sync_api import expect

    from device.records import samples as records

    base, app, rt, _ = live_app
    rt.config.sample.target_cells = 1
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "NC-1")
    n = 0
    while not cells(rt, sid):
        capture_once(page, n)
        n += 1
    c = cells(rt, sid)[0]
    set_cell(rt, c["id"], flag=None, label="blast", category="malignant", probability=0.9,
             probabilities_json=json.dumps({"blast": 0.9, "neutrophil": 0.1}))
    before = records.summary_of(rt.store, sid, rt.config.sample.flags)
    page.click("#review-link")
    page.locator(f"#cell-{c['id']} button.notcell").click()
    expect(page.locator(f"#cell-{c['id']} .label")).to_have_text("Not a white cell / fragment")
    expect(page.locator("#live-counted")).to_have_text(str(before.leukocytes - 1))
    after = records.summary_of(rt.store, sid, rt.config.sample.flags)
    assert after.malignant == before.malignant - 1 and after.leukocytes == before.leukocytes - 1
    row = next(r for r in records.cells_of(rt.store, sid) if r["id"] == c["id"])
    assert records.cell_final(row) == ("not-a-cell", "non-leukocyte")
    ctx.close()


# ---------------------------------------------------------------------------------------------------------------
# 6. One tap per cell, a page at a time, live counts, an explicit accept-above for normal classes only

def many_cells(rt, sid, n_min=40):
    """The bundled fields give about one cell each: copies of their rows make a review as long as a real one."""
    conn = rt.store.connect()
    while conn.execute("SELECT COUNT(*) FROM cells WHERE sample_id = ?", (sid,)).fetchone()[0] < n_min:
        conn.execute("INSERT INTO cells (field_id, sample_id, x1, y1, x2, y2, crop_path, label, category, probability, "
                     "probabilities_json, flag) SELECT field_id, sample_id, x1, y1, x2, y2, crop_path, label, category, "
                     "probability, probabilities_json, flag FROM cells WHERE sample_id = ?", (sid,))
    rows = cells(rt, sid)
    normal = {"neutrophil": 0.97, "lymphocyte": 0.02, "blast": 0.01}
    for i, r in enumerate(rows):  # a known mix: confident normals, uncertain cells, confident blasts
        if i % 3 == 0:
            set_cell(rt, r["id"], flag=None, label="neutrophil", category="normal", probability=0.97,
                     probabilities_json=json.dumps(normal), operator_label=None)
        elif i % 3 == 1:
            set_cell(rt, r["id"], flag="low-confidence", label="lymphocyte", category="normal", probability=0.55,
                     probabilities_json=json.dumps({"lymphocyte": 0.55, "monocyte": 0.4, "blast": 0.05}),
                     operator_label=None)
        else:
            set_cell(rt, r["id"], flag=None, label="blast", category="malignant", probability=0.97,
                     probabilities_json=json.dumps({"blast": 0.97, "lymphocyte": 0.03}), operator_label=None)
    return cells(rt, sid)


def test_review_is_one_tap_per_cell_paged_with_live_counts(browser, live_app):
    from playwright.sync_api import expect

    from device.records import samples as records

    base, app, rt, _ = live_app
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "ONE-1")
    rt.loop.capture(sid, "admin")
    rt.loop.capture(sid, "admin")
    rows = many_cells(rt, sid)
    page.goto(f"{base}/samples/{sid}/review")
    # a page at a time
    assert page.locator("article.cell").count() == 24
    expect(page.locator("#next-page")).to_be_visible()
    height = page.evaluate("document.documentElement.scrollHeight")
    assert height < 3200, height  # about 6 screens of 480 px for a page of 24 cells (was 18,600 px for 252)
    page.evaluate("window.__same_page = 1")
    # an uncertain cell: its class is one tap on the card (no drop-down, no Set)
    card = page.locator("#group-uncertain article.cell").first
    cid = int(card.get_attribute("id").split("-")[1])
    counted = int(page.locator("#live-counted").inner_text())
    card.locator("button.tap[value=lymphocyte]").click()
    expect(card.locator(".label")).to_have_text("Lymphocyte")
    expect(page.locator("#live-counted")).to_have_text(str(counted + 1))  # live, without a reload
    assert page.evaluate("window.__same_page") == 1
    assert records.cell_of(rt.store, cid)["operator_label"] == "lymphocyte"
    # keyboard: the next card has the focus; 0 = not a white cell; Enter confirms a confident cell
    focused = page.evaluate("document.activeElement.id")
    assert focused.startswith("cell-") and focused != f"cell-{cid}"
    page.keyboard.press("0")
    expect(page.locator(f"#{focused} .label")).to_have_text("Not a white cell / fragment")
    assert records.cell_of(rt.store, int(focused.split("-")[1]))["operator_label"] == "not-a-cell"
    # a model class by its number (the legend lists them)
    keyed = page.locator("#keys").get_attribute("data-keyed").split()
    target = page.evaluate("document.activeElement.id")
    page.keyboard.press(str(keyed.index("monocyte") + 1))
    expect(page.locator(f"#{target} .label")).to_have_text("Monocyte")
    # the other page
    page.click("#next-page")
    expect(page).to_have_url(re.compile(r"page=2"))
    assert page.locator("article.cell").count() == min(24, len(rows) - 24)
    # accept the model's guess above P %: normal classes only, audited
    page.fill("#accept-above input[name=min_percent]", "90")
    page.click("#accept-above button")
    expect(page.locator("p.flash").first).to_contain_text("of normal classes accepted")
    after = cells(rt, sid)
    for r in after:
        if r["flag"] is None and r["label"] == "neutrophil":
            assert r["operator_label"] == "neutrophil"
        if r["label"] == "blast":
            assert r["operator_label"] is None  # blasts are looked at one by one
        if r["flag"] == "low-confidence" and r["id"] not in (cid,):
            assert r["operator_label"] in (None, "not-a-cell", "monocyte")
    audit = rt.store.connect().execute("SELECT detail FROM audit WHERE action = 'accept-above'").fetchone()
    assert audit is not None and json.loads(audit[0])["min_probability"] == 0.9
    # the blast group has no accept-all
    page.goto(f"{base}/samples/{sid}/review")
    for grp in page.locator("section.group.cat-malignant").all():
        assert grp.locator("form.accept").count() == 0
    ctx.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------------------------
# 8. 16:9 frames: the boxes land on the cells

def test_boxes_on_a_16_9_field_land_on_its_cells_not_in_the_letterbox(browser, live_app, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    ctx, page, errors = admin_page(browser, base, DESK)
    sid = new_sample(page, "WIDE-1")
    img = Image.open(FIELDS / "BloodImage_00052.jpg")
    wide = tmp_path / "wide.png"
    img.crop((0, 60, 640, 420)).save(wide)  # 640 x 360, its cell (low in the frame) kept whole
    upload(page, wide)
    expect(page.locator("#last-field svg rect").first).to_be_attached()
    fid = rt.store.connect().execute("SELECT id, width, height FROM fields WHERE sample_id = ?", (sid,)).fetchone()
    assert (fid["width"], fid["height"]) == (640, 360)
    c = cells(rt, sid)[0]
    shown = page.evaluate("""() => {
        const img = document.querySelector('#last-field img'), r = img.getBoundingClientRect();
        const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
        const w = img.naturalWidth * s, h = img.naturalHeight * s;
        const rect = document.querySelector('#last-field svg rect').getBoundingClientRect();
        return {x: r.left + (r.width - w) / 2, y: r.top + (r.height - h) / 2, s: s,
                rx: rect.left, ry: rect.top, rw: rect.width, rh: rect.height};
    }""")
    # where the cell's box must be drawn on the letterboxed picture (stroke width aside)
    ex, ey = shown["x"] + c["x1"] * shown["s"], shown["y"] + c["y1"] * shown["s"]
    ew, eh = (c["x2"] - c["x1"]) * shown["s"], (c["y2"] - c["y1"]) * shown["s"]
    assert abs(shown["rx"] - ex) < 4 and abs(shown["ry"] - ey) < 4, (shown, ex, ey)
    assert abs(shown["rw"] - ew) < 6 and abs(shown["rh"] - eh) < 6, (shown, ew, eh)
    ctx.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------------------------
# 4, 5, 7 on the page: no blast fraction without a blast class; each model's limits; the limits in plain words

def test_a_sample_of_a_child_warns_and_the_limits_lead_with_plain_translated_sentences(browser, live_app):
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    ctx, page, errors = admin_page(browser, base)
    sid = new_sample(page, "CH-7", age="7")
    rt.loop.capture(sid, "admin")
    page.goto(f"{base}/samples/{sid}/finish")
    page.click("#confirm-finish")
    limits = page.locator("#model-limits")
    expect(limits.locator("p.lead").first).to_contain_text("This result says whether the model finds blast-like cells")
    expect(limits.locator(".limit-warning")).to_contain_text("This patient is 7 years old")
    # the figures are folded below the two sentences
    expect(limits.locator("details")).not_to_have_attribute("open", "")
    assert limits.locator("details dl").is_hidden()
    expect(page.locator("h1 + span, .head .muted").first).to_contain_text("7 years")
    # French: the sentences and the warning translated
    page.goto(base + "/account")
    page.select_option("#language", "fr")
    page.click("#save-language")
    page.goto(f"{base}/samples/{sid}")
    expect(limits.locator("p.lead").first).to_contain_text("Ce résultat")
    expect(limits.locator(".limit-warning")).to_contain_text("7 ans")
    ctx.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------------------------------------------
# 10. The 800x480 screen: the primary actions without scrolling, touch targets of 40 px

def small_targets(page) -> list:
    return page.evaluate("""() => Array.from(document.querySelectorAll(
        'main button, main a.button, main input:not([type=hidden]):not([type=checkbox]), main select, main summary, '
        + 'main label.check, main .group-index a'))
        .filter(e => e.offsetParent !== null)
        .map(e => [e.id || e.className || e.tagName, Math.round(e.getBoundingClientRect().height)])
        .filter(([n, h]) => h < 40)""")


def test_the_800x480_screen_shows_start_confirmation_refer_and_reopen_without_scrolling(browser, live_app):
    from playwright.sync_api import expect

    base, app, rt, _ = live_app
    rt.config.sample.target_cells = 1
    ctx, page, errors = admin_page(browser, base)
    page.goto(base + "/")
    above_fold(page, "#start-sample")
    assert small_targets(page) == []
    sid = new_sample(page, "SMALL-1", age="40", note="fever")
    # the same id again: the confirmation and the button are on the first screen, the checkbox a real target
    page.goto(base + "/")
    page.fill("input[name=sample_code]", "SMALL-1")
    page.fill("input[name=patient_name]", "A. Patient")
    page.fill("textarea[name=note]", "second smear")
    page.click("#start-sample")
    expect(page.locator("#duplicate-warning")).to_be_visible()
    above_fold(page, "#confirm-duplicate")
    above_fold(page, "#start-sample")
    box = page.locator("label.check").bounding_box()
    assert box["height"] >= 40 and page.locator("#confirm-duplicate").bounding_box()["width"] >= 24
    assert small_targets(page) == []
    # a sample that must be referred: its red flag is on the capture page's first screen, above the counts
    page.goto(f"{base}/samples/{sid}")
    n = 0
    while not cells(rt, sid):
        capture_once(page, n)
        n += 1
    conn = rt.store.connect()
    conn.execute("UPDATE cells SET label = 'blast', category = 'malignant', flag = NULL WHERE sample_id = ?", (sid,))
    page.reload()
    expect(page.locator("#flags li.refer").first).to_be_visible()
    above_fold(page, "#flags li.refer")
    above_fold(page, "#capture")
    assert page.locator("#button-target").count() == 0  # no push-button set up: no push-button controls
    assert small_targets(page) == []
    page.goto(f"{base}/samples/{sid}/finish")
    page.click("#confirm-finish")
    above_fold(page, "#reopen-link")
    page.click("#reopen-link")
    expect(page.locator("#reopen-form input[name=reason]")).to_be_in_viewport()
    page.goto(f"{base}/samples/{sid}/review")
    assert small_targets(page) == []
    ctx.close()
    assert errors == [], errors


def above_fold(page, selector):
    page.evaluate("window.scrollTo(0, 0)")
    box = page.locator(selector).first.bounding_box()
    assert box is not None, selector
    assert box["y"] >= 0 and box["y"] + box["height"] <= page.viewport_size["height"], (selector, box, page.url)
