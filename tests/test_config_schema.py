"""Issue 12 item 19: one typed schema with ranges for the config file, the Settings page and the defaults dump.

Each fault found by the adversarial test is a named test here, through the config file (the CLI's one-line
exit) and through the Settings page of the real app (400 with the message, nothing saved).
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from device.config import (
    AppConfig,
    ConfigError,
    commented_defaults,
    config_from_dict,
    load_config,
)
from device.schema import spec_of
from device.settings import load_effective, overrides_path
from device.web.settings_form import form_values
from testkit.web import csrf_of

REPO = Path(__file__).resolve().parent.parent


# ---- the config file: `leukoscope serve --config` exits with one line naming section and key ----------

def _serve_refuses(tmp_path, capsys, monkeypatch, toml: str, *expected: str) -> str:
    from device import serve as serve_mod
    from device.cli import main

    # a config the schema wrongly let through must not start a real server inside the test run
    monkeypatch.setattr(serve_mod, "serve", lambda cfg: 0)
    path = tmp_path / "config.toml"
    path.write_text(toml)
    code = main(["serve", "--config", str(path), "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    assert not (tmp_path / "data" / "records.db").exists()  # refused before anything started
    return err


def test_config_file_refuses_a_target_of_99999999999999999999_cells(tmp_path, capsys, monkeypatch):
    _serve_refuses(tmp_path, capsys, monkeypatch, "[sample]\ntarget_cells = 99999999999999999999\n",
                   "[sample] target_cells", "at most 10000")


def test_config_file_refuses_a_preview_size_of_5(tmp_path, capsys, monkeypatch):
    _serve_refuses(tmp_path, capsys, monkeypatch, "[camera]\npreview_size = [5, 5]\n", "[camera] preview_size", "at least 64")
    _serve_refuses(tmp_path, capsys, monkeypatch, "[camera]\npreview_size = [640]\n", "[camera] preview_size", "width and height")
    _serve_refuses(tmp_path, capsys, monkeypatch, "[camera]\npreview_size = 5\n", "[camera] preview_size")


def test_config_file_refuses_a_fractional_port(tmp_path, capsys, monkeypatch):
    _serve_refuses(tmp_path, capsys, monkeypatch, "[server]\nport = 8080.5\n", "[server] port", "whole number")


def test_config_file_refuses_0_server_threads(tmp_path, capsys, monkeypatch):
    _serve_refuses(tmp_path, capsys, monkeypatch, "[server]\nthreads = 0\n", "[server] threads", "at least 1")


def test_config_file_refuses_min_brightness_above_max(tmp_path, capsys, monkeypatch):
    _serve_refuses(tmp_path, capsys, monkeypatch, "[qc]\nmin_background = 240\n", "[qc] min_background",
                   "below max_cell_brightness")
    _serve_refuses(tmp_path, capsys, monkeypatch, "[qc]\nmin_background = 100\nmax_cell_brightness = 90\n",
                   "[qc] min_background")


def test_config_file_refuses_a_negative_free_space_limit(tmp_path, capsys, monkeypatch):
    _serve_refuses(tmp_path, capsys, monkeypatch, "[storage]\nmin_free_mb = -1\n", "[storage] min_free_mb", "at least 0")


# ---- the schema itself --------------------------------------------------------------------------------

def _numeric_fields():
    for section in dataclasses.fields(AppConfig):
        cls = type(getattr(AppConfig(), section.name))
        hints = __import__("typing").get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] in (int, float) or f.name.endswith("_size"):
                yield section.name, f.name


def _limit(section: str, key: str):
    """(kind, lo, hi) of a setting's declared range: kind "size" (each of width and height), "gt" (more than lo)
    or "ge"; None when it declares none."""
    f = {f.name: f for f in dataclasses.fields(type(getattr(AppConfig(), section)))}[key]
    s = spec_of(f)
    if s.le is None:
        return None
    if key.endswith("_size"):
        return "size", s.ge, s.le
    return ("gt", s.gt, s.le) if s.gt is not None else ("ge", s.ge, s.le)


def test_every_number_has_a_range_and_both_ends_are_enforced():
    missing = [(s, k) for s, k in _numeric_fields() if _limit(s, k) is None]
    assert not missing, f"numbers without a declared range (device/schema.py setting()): {missing}"
    checked = 0
    for section, key in _numeric_fields():
        kind, lo, hi = _limit(section, key)
        if kind == "size":
            for bad in ([lo - 1, lo], [hi, hi + 1]):
                with pytest.raises(ConfigError, match=rf"^\[{section}\] {key}: "):
                    config_from_dict({section: {key: bad}})
            assert getattr(getattr(config_from_dict({section: {key: [lo, hi]}}), section), key) == [lo, hi]
            checked += 1
            continue
        below = lo if kind == "gt" else lo - (1 if isinstance(lo, int) and isinstance(hi, int) else 0.001)
        for bad in (below, hi + 1):
            with pytest.raises(ConfigError, match=rf"^\[{section}\] {key}: must be "):
                config_from_dict({section: {key: bad}})
        checked += 1
    assert checked >= 30  # 35 when written


def test_whole_numbers_refuse_fractions_and_booleans_refuse_numbers():
    for raw, text in [({"model": {"threads": 1.5}}, "[model] threads: must be a whole number"),
                      ({"gpio": {"button_pin": 28}}, "[gpio] button_pin: must be at most 27"),
                      ({"camera": {"um_per_pixel": 5}}, "[camera] um_per_pixel: must be at most 2.0"),
                      ({"camera": {"loop": 1}}, "[camera] loop: must be true or false"),
                      ({"camera": {"backend": "webcam"}}, "[camera] backend: must be one of"),
                      ({"web": {"session_hours": 0}}, "[web] session_hours: must be at least 1"),
                      ({"cells": {"join_um": 0}}, "[cells] join_um: must be more than 0"),
                      ({"qc": {"min_cell_fraction": 0.98}}, "[qc] min_cell_fraction: must be below max_cell_fraction"),
                      ({"qc": {"max_edge_um": float("nan")}}, "[qc] max_edge_um"),
                      ({"sample": {"flags": [{"category": "malignant", "message": "x", "min_fraction": 2}]}},
                       "[sample.flags #1] min_fraction: must be at most 1"),
                      ({"sample": {"flags": [{"category": "malignant"}]}}, "[sample.flags #1] message: is required"),
                      ({"server": {"prot": 80}}, "[server]: unknown setting(s) ['prot']"),
                      ({"sever": {}}, "unknown section(s) ['sever']")]:
        with pytest.raises(ConfigError) as info:
            config_from_dict(raw)
        assert str(info.value).startswith(text), (raw, str(info.value))
    cfg = config_from_dict({"qc": {"min_background": 60}, "camera": {"still_size": [], "um_per_pixel": 1}})
    assert cfg.qc.min_background == 60.0 and isinstance(cfg.qc.min_background, float)
    assert cfg.camera.um_per_pixel == 1.0 and isinstance(cfg.camera.um_per_pixel, float)


def test_retired_settings_are_dropped_with_a_warning(caplog):
    cfg = config_from_dict({"qc": {"min_focus": 3.0, "max_edge_um": 1.1}})
    assert cfg.qc.max_edge_um == 1.1
    assert "retired" in caplog.text and "min_focus" in caplog.text


def test_commented_defaults_uncommented_load_to_the_defaults(tmp_path):
    text = commented_defaults()
    assert "# port = 8080  # 1..65535" in text and "# preview_size = [640, 480]" in text
    uncommented = "\n".join(line[2:] if line.startswith("# ") and ("=" in line or line.startswith("# [["))
                            else line for line in text.splitlines()[3:])
    path = tmp_path / "config.toml"
    path.write_text(uncommented)
    assert tomllib.loads(uncommented)["sample"]["flags"]  # the flag rules were uncommented too
    assert load_config(path) == AppConfig()
    out = subprocess.run([sys.executable, "-m", "device.cli", "config", "defaults"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout == text


def test_the_analysis_settings_import_without_pydantic():
    """cells.py and qc.py are used by the training code too: they must not need the schema's library."""
    code = ("import sys; sys.modules['pydantic'] = None; sys.modules['pydantic_core'] = None\n"
            "from device.analysis.cells import CellFinderSettings; from device.analysis.qc import QCSettings\n"
            "print(CellFinderSettings().max_cells, QCSettings().min_background)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.split() == ["60", "70.0"], out.stderr


def test_a_bad_value_in_the_saved_settings_file_names_the_file_and_key(tmp_path):
    """The Settings page's own file (data_dir/settings.toml) goes through the same schema: a fractional port
    written there (by hand or an older version) stops the start with the file and key named."""
    cfg_file = tmp_path / "config.toml"
    cfg_file.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    (tmp_path / "data").mkdir()
    overrides_path(tmp_path / "data").write_text("[server]\nport = 80.5\n")
    with pytest.raises(ConfigError) as info:
        load_effective(cfg_file)
    assert "settings.toml" in str(info.value) and "[server] port: must be a whole number" in str(info.value)


# ---- the Settings page: 400 with the message, nothing saved, new samples still work ------------------

def _post_settings(base, s, rt, **changes):
    page = s.get(base + "/settings")
    form = {k: str(v) for k, v in form_values(rt.config).items()}
    form.update({"csrf_token": csrf_of(page.text), "flags_toml": ""}, **changes)
    return s.post(base + "/settings", data=form)


def _refused(page_app, admin, field: str, value: str, *expected: str):
    base, _, rt, _ = page_app
    s = admin
    before = rt.config
    r = _post_settings(base, s, rt, **{field: value})
    assert r.status_code == 400, r.text[:300]
    for text in expected:
        assert text in r.text, r.text
    assert f'value="{value}"' in r.text  # what was typed is still in the form
    assert rt.config == before and not overrides_path(rt.config.data_dir).exists()
    # and the appliance still works: a new sample opens
    page = s.get(base + "/")
    r = s.post(base + "/samples", data={"csrf_token": csrf_of(page.text), "sample_code": "AFTER-1"})
    assert r.status_code == 200 and "/samples/" in r.url
    return s


def test_settings_page_refuses_a_target_of_99999999999999999999_cells(page_app, admin):
    _refused(page_app, admin, "sample.target_cells", "99999999999999999999", "Target white cells per sample",
             "must be at most 10000")


def test_settings_page_refuses_a_preview_size_of_5(page_app, admin):
    _refused(page_app, admin, "camera.preview_size", "5", "Preview size", "must be at least 64")


def test_settings_page_refuses_0_server_threads(page_app, admin):
    _refused(page_app, admin, "server.threads", "0", "Web server threads", "must be at least 1")


def test_settings_page_refuses_min_brightness_above_max(page_app, admin):
    _refused(page_app, admin, "qc.min_background", "240", "Minimum glass brightness (0-255): must be below "
             "Maximum cell brightness (0-255)")


def test_settings_page_refuses_a_negative_free_space_limit(page_app, admin):
    _refused(page_app, admin, "storage.min_free_mb", "-1", "Refuse new captures below this free space", "must be at least 0")


def test_settings_page_refuses_fractional_whole_numbers_and_accepts_good_values(page_app, admin):
    base, _, rt, _ = page_app
    s = _refused(page_app, admin, "sample.target_cells", "1.5", "Target white cells per sample", "must be a whole number")
    r = _post_settings(base, s, rt, **{"camera.preview_size": "800 x 600", "storage.min_free_mb": "0",
                                       "server.threads": "4", "sample.target_cells": "10000"})
    assert r.ok and "Settings saved" in r.text and "server settings at the next restart" in r.text
    assert rt.config.camera.preview_size == [800, 600] and rt.config.server.threads == 4
    assert rt.store.min_free_mb == 0 and rt.config.sample.target_cells == 10000
    assert 'value="800x600"' in s.get(base + "/settings").text


def test_settings_page_message_is_translated(page_app, admin):
    base, _, rt, _ = page_app
    s = admin
    rt.store.connect().execute("UPDATE users SET language = 'fr'")
    r = _post_settings(base, s, rt, **{"server.threads": "0"})
    assert r.status_code == 400
    assert "doit valoir au moins 1" in r.text, r.text


def test_settings_page_names_the_flag_rule_and_key(page_app, admin):
    base, _, rt, _ = page_app
    s = admin
    r = _post_settings(base, s, rt, flags_toml='[[sample.flags]]\ncategory = "malignant"\nmessage = "refer"\n'
                                               'min_count = 1\n[[sample.flags]]\ncategory = "malignant"\n'
                                               'message = "x"\nmin_fraction = 1.5\n')
    assert r.status_code == 400 and "[sample.flags #2] min_fraction: must be at most 1" in r.text, r.text[-2000:]
    assert "min_fraction = 1.5" in r.text  # the typed rules are kept in the form
    assert rt.config.sample.flags == AppConfig().sample.flags
