from __future__ import annotations

import time

import pytest

from device.config import AppConfig, ConfigError, config_from_dict
from device.settings import load_effective, save_overrides
from device.web.settings_form import parse_form
from testkit import REPO, wait_until
from testkit.web import csrf_of


def test_saved_settings_layer_over_the_config_file(tmp_path):
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n[sample]\ntarget_cells = 200\n')
    cfg = load_effective(cfg_file)
    assert cfg.sample.target_cells == 200
    new = save_overrides(cfg, {"sample": {"target_cells": 150}, "qc": {"max_edge_um": 1.2}})
    assert new.sample.target_cells == 150
    again = load_effective(cfg_file)
    assert again.sample.target_cells == 150 and again.qc.max_edge_um == 1.2
    assert again.storage.data_dir == str(tmp_path / "data")
    with pytest.raises(ConfigError):
        save_overrides(cfg, {"camera": {"backend": "webcam9000"}})
    assert load_effective(cfg_file).camera.backend == "replay"  # the refused change was not written


def test_form_parsing_names_the_bad_field():
    with pytest.raises(ConfigError, match="Target white cells"):
        parse_form({"sample.target_cells": "lots"}, AppConfig())
    with pytest.raises(ConfigError, match="Flag rules"):
        parse_form({"flags_toml": "[server]\nport = 1"}, AppConfig())
    changes = parse_form({"flags_toml": '[[sample.flags]]\ncategory = "malignant"\nmessage = "refer now"\n'
                                        'level = "refer"\nmin_count = 3\n'}, AppConfig())
    cfg = config_from_dict(changes)
    assert cfg.sample.flags[0].min_count == 3 and cfg.sample.flags[0].message == "refer now"


def test_settings_page_changes_apply_live(page_app, admin):
    base, app, rt, tmp = page_app
    s = admin
    page = s.get(base + "/settings")
    form = {"csrf_token": csrf_of(page.text), "web.clinic_name": "Kisumu Health Centre", "sample.target_cells": "7",
            "storage.retention_days": "0", "camera.backend": "replay", "camera.folder": str(tmp / "fields"),
            "camera.device": "0", "camera.um_per_pixel": "0.1", "qc.max_edge_um": "0.95",
            "qc.min_background": "70", "qc.max_cell_brightness": "235", "qc.max_clipped": "0.05",
            "qc.min_cell_fraction": "0.02", "flags_toml": ""}
    r = s.post(base + "/settings", data=form)
    assert r.ok and "Settings saved" in r.text
    assert rt.config.sample.target_cells == 7 and "Kisumu Health Centre" in s.get(base + "/").text
    bad = dict(form, **{"qc.max_edge_um": "sharp"})
    r = s.post(base + "/settings", data=bad)
    assert r.status_code == 400 and "Focus: widest acceptable cell edge" in r.text
    assert rt.config.qc.max_edge_um == 0.95
    assert rt.store.connect().execute("SELECT COUNT(*) FROM audit WHERE action = 'settings-changed'").fetchone()[0] == 1


def test_push_button_target_is_explicit_visible_and_cleared_on_finish(page_app, admin):
    """Issue 12 item 5: viewing a sample does not aim the button; choosing does; finishing clears it;
    a refused press is logged and shown on the capture page."""
    from gpiozero.pins.mock import MockFactory

    from device.records import samples as records
    from device.box.button import start_button

    base, app, rt, _ = page_app
    s = admin
    sid = records.create_sample(rt.store, "BTN-1", "admin")
    other = records.create_sample(rt.store, "BTN-2", "admin")
    factory = MockFactory()
    button = start_button(17, rt.press, pin_factory=factory)

    def press():
        factory.pin(17).drive_low()
        factory.pin(17).drive_high()

    def fields(sample):
        return rt.store.connect().execute("SELECT COUNT(*) FROM fields WHERE sample_id = ?", (sample,)).fetchone()[0]

    try:
        page = s.get(base + f"/samples/{other}")  # only looking at a sample does not aim the button
        press()
        wait_until(lambda: rt.button_message, "the press to be refused")  # before: a fixed 0.5 s sleep
        assert rt.loop.captures == 0
        page = s.get(base + f"/samples/{sid}")
        assert "no sample is chosen" in page.text and 'id="button-message"' in page.text  # the refusal is shown
        r = s.post(base + f"/samples/{sid}/button", data={"csrf_token": csrf_of(page.text)})
        assert "captures into this sample" in r.text
        assert "captures into BTN-1" in s.get(base + f"/samples/{other}").text  # visible from any sample
        press()
        t0 = time.monotonic()
        while fields(sid) < 1:
            assert time.monotonic() - t0 < 10
            time.sleep(0.05)
        assert fields(other) == 0
        r = s.post(base + f"/samples/{sid}/finish", data={"csrf_token": csrf_of(page.text), "confirmed": "1"})
        assert r.ok
        assert rt.button_target is None
        assert not rt.button_message  # the accepted press cleared the refusal
        press()
        wait_until(lambda: rt.button_message, "the press after finishing to be refused")
        assert fields(sid) == 1 and fields(other) == 0
        assert "no sample is chosen" in s.get(base + f"/samples/{other}").text
        assert s.get(base + "/api/status").json()["button_message"]
    finally:
        button.close()


def test_the_settings_page_keeps_the_last_measured_scale(page_app, admin):
    """A field's red cells measure the pixel size; the administrator keeps that value as the
    configured one (used for fields with too few red cells), and it survives a restart."""
    from device.settings import load_effective

    base, app, rt, tmp = page_app
    s = admin
    page = s.get(base + "/settings")
    assert "No field from this camera has been measured" in page.text
    r = s.post(base + "/settings/scale", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 409
    # a photograph uploaded from elsewhere (here a field enlarged 2x: another optic) is never offered (issue 21)
    import io

    from PIL import Image

    sid = records_sample(rt)
    img = Image.open(REPO / "device/assets/fields/BloodImage_00023.jpg")
    buf = io.BytesIO()
    img.resize((1280, 960)).save(buf, format="JPEG")
    r = s.post(f"{base}/samples/{sid}/upload", data={"csrf_token": csrf_of(page.text)},
               files={"image": ("phone.jpg", buf.getvalue(), "image/jpeg")})
    assert r.ok and rt.analyzer.locator.last_measured is not None  # measured, but from an upload
    page = s.get(base + "/settings")
    assert "No field from this camera has been measured" in page.text
    assert s.post(base + "/settings/scale", data={"csrf_token": csrf_of(page.text)}).status_code == 409
    rt.loop.capture(sid, "tester")
    measured = rt.analyzer.locator.last_measured
    assert measured is not None and measured.source == "red cells" and 0.06 < measured.um_per_px < 0.12
    assert 'id="field-scale"' in s.get(base + f"/samples/{rt.store.connect().execute('SELECT MAX(id) FROM samples').fetchone()[0]}").text
    page = s.get(base + "/settings")
    assert "Last measured by this camera from the red cells" in page.text and "confidence" in page.text
    r = s.post(base + "/settings/scale", data={"csrf_token": csrf_of(page.text)})
    assert r.ok and rt.config.camera.um_per_pixel == round(measured.um_per_px, 5)
    again = load_effective(None, rt.config.data_dir)
    assert again.camera.um_per_pixel == round(measured.um_per_px, 5)


def records_sample(rt) -> int:
    from device.records import samples as records

    return records.create_sample(rt.store, "SCALE-1", "tester")
