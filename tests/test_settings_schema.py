"""Issue 22 items 1, 2 and 7: a setting is declared once, in the module that uses it (device/schema.py setting()),
and the loader, the defaults dump, the Settings page and the camera registry are generated from the declarations."""
from __future__ import annotations

import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest
from babel.messages.pofile import read_po

from device import config as cfgmod
from device.camera import CameraConfig, _discover, backends, config_class, make_camera
from device.config import LANGUAGES, AppConfig, ConfigError, check_section, config_from_dict
from device.schema import N_, below, check, setting, spec_of
from device.web import settings_form
from testkit.web import signed_in

REPO = Path(__file__).resolve().parent.parent
DEVICE = REPO / "device"
TRANSLATIONS = DEVICE / "web" / "translations"


def _declared_labels() -> list[tuple[str, str, str]]:
    out = []
    for section in dataclasses.fields(AppConfig):
        for f in dataclasses.fields(type(getattr(AppConfig(), section.name))):
            if spec_of(f).label:
                out.append((section.name, f.name, spec_of(f).label))
    return out


@pytest.mark.parametrize("lang", ["fr", "ar"])
def test_every_page_setting_has_a_label_translated_in_fr_and_ar(lang):
    with open(TRANSLATIONS / lang / "LC_MESSAGES" / "messages.po", "rb") as fh:
        catalogue = read_po(fh)
    labels = _declared_labels()
    assert len(labels) == 17  # the page's fields when this was written
    missing = [(s, k, label) for s, k, label in labels
               if catalogue.get(label) is None or not catalogue.get(label).string or catalogue.get(label).fuzzy]
    assert not missing, f"settings without a {lang} translation: {missing}"


def test_the_settings_page_fields_are_the_labelled_declarations():
    page = {(e.section, e.key): e for e in settings_form.EDITABLE}
    declared = {(s, k): label for s, k, label in _declared_labels()}
    assert set(page) == set(declared)
    assert all(page[k].label == declared[k] for k in declared)
    kinds = {(e.section, e.key): e.kind for e in settings_form.EDITABLE}
    assert kinds[("web", "language")] == "choice:" + ",".join(LANGUAGES)
    assert kinds[("camera", "backend")] == "choice:" + ",".join(backends())
    assert kinds[("camera", "preview_size")] == "size" and kinds[("qc", "max_edge_um")] == "float"
    assert kinds[("sample", "target_cells")] == "int" and kinds[("web", "clinic_name")] == "text"


def test_each_label_is_written_once_in_the_device_code():
    """No second list of labels (the page's old EDITABLE table, words.py's catalogue list): the declaration only."""
    sources = {p: p.read_text() for p in DEVICE.rglob("*.py")}
    for section, key, label in _declared_labels():
        where = [str(p.relative_to(REPO)) for p, text in sources.items() if f'"{label}"' in text]
        assert len(where) == 1, (section, key, where)


def test_a_setting_declared_in_one_place_reaches_the_loader_the_dump_and_the_page(monkeypatch):
    """Adding a setting touches one module: its declaration is checked by the loader (range and cross-field rule,
    with the operator's messages), noted in the defaults dump and, labelled, shown on the page."""

    @dataclasses.dataclass(frozen=True)
    class Lamp:
        low: float = setting(10.0, ge=0, le=100, label=N_("Lamp: lowest level (%)"))
        high: float = setting(90.0, ge=0, le=100)
        mode: str = setting("auto", choices=("auto", "manual"))

        def __post_init__(self):
            check(self)
            below(self, "low", "high")

    assert check_section(Lamp, {"low": 20}, "lamp") == Lamp(low=20.0)
    for raw, text in [({"low": 101}, "[lamp] low: must be at most 100 (got 101)"),
                      ({"low": 95}, "[lamp] low: must be below high (90.0) (got 95.0)"),
                      ({"mode": "off"}, "[lamp] mode: must be one of 'auto' or 'manual'"),
                      ({"watts": 5}, "[lamp]: unknown setting(s) ['watts']")]:
        with pytest.raises(ConfigError) as info:
            check_section(Lamp, raw, "lamp")
        assert str(info.value).startswith(text), str(info.value)
    with pytest.raises(ValueError):  # built in code, the declared range holds too
        Lamp(low=-1)
    notes = {f.name: cfgmod._range_note(f) for f in dataclasses.fields(Lamp)}
    assert notes == {"low": "  # 0..100", "high": "  # 0..100", "mode": ""}

    @dataclasses.dataclass
    class WithLamp(AppConfig):
        qc: Lamp = dataclasses.field(default_factory=Lamp)

    fields = settings_form.editable(WithLamp())
    assert ("qc", "low", "Lamp: lowest level (%)", "float") in [tuple(e) for e in fields]
    assert ("qc", "high") not in [(e.section, e.key) for e in fields]  # no label: not on the page


def test_the_language_list_exists_once():
    """One constant (device.config.LANGUAGES): the schema's choice, the page's language names, the account page
    and the request's best match all use it, and every language but English has its catalogue."""
    lists = []
    for path in DEVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = node.keys if isinstance(node, ast.Dict) else node.elts
                codes = {n.value for n in items if isinstance(n, ast.Constant)}
                if {"fr", "ar"} <= codes:
                    lists.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.fullmatch(r"(en|fr|ar)(,(en|fr|ar))+",
                                                                                              node.value):
                lists.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert len(lists) == 1 and lists[0].startswith("device/config.py:"), lists
    from device.web import auth, words

    assert words.LANGUAGES is LANGUAGES and auth.LANGUAGES is LANGUAGES
    assert spec_of({f.name: f for f in dataclasses.fields(cfgmod.WebConfig)}["language"]).choices == tuple(LANGUAGES)
    assert {p.name for p in TRANSLATIONS.iterdir() if p.is_dir()} == set(LANGUAGES) - {"en"}


def test_the_settings_page_shows_the_generated_fields_in_order(live_app):
    base, _, rt, _ = live_app
    html = signed_in(base).get(base + "/settings").text
    names = re.findall(r'<(?:input|select) name="((?:web|sample|storage|server|camera|qc)\.\w+)"', html)
    assert names == [f"{e.section}.{e.key}" for e in settings_form.EDITABLE]
    assert len(names) == 17 and names[0] == "web.clinic_name" and names[-1] == "qc.min_cell_fraction"


# ---- cameras: back-ends as plugins ---------------------------------------------------------------------

def test_the_camera_registry_and_section_come_from_the_back_end_modules():
    names = [p.stem for p in (DEVICE / "camera").glob("*.py") if re.search(r"^BACKEND = Backend\(", p.read_text(), re.M)]
    assert sorted(backends()) == sorted(b.name for b in backends().values()) and len(names) == len(backends()) == 3
    assert list(backends()) == ["replay", "opencv", "picamera2"]  # the default first
    fields = [f.name for f in dataclasses.fields(CameraConfig)]
    own = [f.name for b in backends().values() for f in dataclasses.fields(b.options)]
    assert fields == ["backend", *own, "um_per_pixel"]
    assert AppConfig().camera == CameraConfig() and type(AppConfig().camera) is CameraConfig
    # each back-end's options, typed by its own declaration
    cfg = config_from_dict({"camera": {"backend": "opencv", "device": 3, "folder": "/x"}})
    assert type(cfg.camera.options()).__name__ == "OpenCVOptions" and cfg.camera.options().device == 3
    assert cfg.camera.folder == "/x"  # another back-end's key is kept (the page and today's files carry them all)


def test_a_camera_plugin_declaring_a_new_name_is_picked_up(tmp_path, monkeypatch):
    pkg = tmp_path / "morecams"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "fake.py").write_text(
        "from dataclasses import dataclass\n"
        "from device.camera.base import Backend\n"
        "from device.camera.replay import ReplayCamera\n"
        "from device.schema import setting\n"
        "@dataclass(frozen=True)\n"
        "class FakeOptions:\n"
        "    gain: float = setting(1.0, ge=1, le=16)\n"
        "BACKEND = Backend('fake', FakeOptions, lambda o: ReplayCamera(), rank=5)\n")
    (pkg / "helper.py").write_text("X = 1\n")  # a module without a declaration is no back-end
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = {**backends(), **_discover("morecams", [str(pkg)])}
    assert list(registry) == ["replay", "opencv", "picamera2", "fake"]
    cls = config_class(registry)
    assert [f.name for f in dataclasses.fields(cls)][-2:] == ["gain", "um_per_pixel"]
    section = check_section(cls, {"backend": "fake", "gain": 4}, "camera")
    assert section.options().gain == 4.0 and registry["fake"].make(section.options()).name.startswith("replay:")
    with pytest.raises(ConfigError, match=r"^\[camera\] gain: must be at most 16 \(got 17\)"):
        check_section(cls, {"backend": "fake", "gain": 17}, "camera")
    with pytest.raises(ConfigError, match=r"^\[camera\] backend: must be one of 'replay', 'opencv', 'picamera2' or 'fake'"):
        check_section(cls, {"backend": "webcam"}, "camera")
    # two back-ends may not declare the same key of [camera]
    (pkg / "clash.py").write_text(
        "from dataclasses import dataclass\n"
        "from device.camera.base import Backend\n"
        "from device.schema import setting\n"
        "@dataclass(frozen=True)\n"
        "class ClashOptions:\n"
        "    folder: str = ''\n"
        "BACKEND = Backend('clash', ClashOptions, lambda o: None, rank=6)\n")
    with pytest.raises(RuntimeError, match="both declare"):
        config_class({**backends(), **_discover("morecams", [str(pkg)])})
    sys.modules.pop("morecams", None)


def test_make_camera_takes_only_the_back_end_s_own_settings():
    cam = make_camera("replay", folder="", loop=False)
    assert cam.loop is False
    with pytest.raises(TypeError):
        make_camera("replay", device=3)  # an OpenCV key: no longer passed around loosely
    with pytest.raises(ValueError, match=r"unknown camera back-end 'webcam9000'; choose replay, opencv or picamera2"):
        make_camera("webcam9000")


def test_the_training_recipe_loads_without_pydantic():
    """build_section lives in training/ and ConfigError in the stdlib-only device/schema.py: a training machine
    reads its recipes (and the analysis settings) without the device's schema library."""
    import subprocess

    code = ("import sys; sys.modules['pydantic'] = None; sys.modules['pydantic_core'] = None\n"
            "from training.config import REPO_ROOT, load_recipe, build_section\n"
            "from device.schema import ConfigError\n"
            "r = load_recipe(REPO_ROOT / 'training/configs/pbc-differential.toml')\n"
            "try:\n"
            "    build_section(type(r.train), {'epochs': 'many'}, 'train')\n"
            "except ConfigError as exc:\n"
            "    print(r.task, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "differential [train] epochs: expected a number, got 'many'", out.stdout


# ---- issue 22 review: a labelled bool, and the form's limits from the declarations ----------------------------------

def _with_lamp_section():
    @dataclasses.dataclass(frozen=True)
    class Lamp:
        on: bool = setting(False, label=N_("Lamp on"))
        note: str = setting("", max_length=10, label=N_("Lamp note"))

        def __post_init__(self):
            check(self)

    @dataclasses.dataclass
    class WithLamp(AppConfig):
        lamp: Lamp = dataclasses.field(default_factory=Lamp)

    return WithLamp


def test_a_labelled_bool_setting_is_saved_through_the_form(tmp_path):
    """A bool declared with a label is a yes/no choice on the page and saved as a bool (it used to be posted as the
    text "True" and refused by the schema)."""
    from device.settings import save_overrides

    WithLamp = _with_lamp_section()
    cfg = WithLamp()
    cfg.storage.data_dir = str(tmp_path)
    assert ("lamp", "on", "Lamp on", "bool") in [tuple(e) for e in settings_form.editable(cfg)]  # found, not listed
    assert settings_form.form_values(cfg)["lamp.on"] == "false"
    changes = settings_form.parse_form({"lamp.on": "true"}, cfg)
    assert changes == {"lamp": {"on": True}}
    assert check_section(type(cfg.lamp), changes["lamp"], "lamp").on is True
    assert settings_form.parse_form({"lamp.on": "false"}, cfg) == {"lamp": {"on": False}}
    with pytest.raises(ConfigError, match=r"^Lamp on: 'maybe' is not a valid value$"):
        settings_form.parse_form({"lamp.on": "maybe"}, cfg)
    # the form's text limit is the declaration's, not one figure for every text
    assert settings_form.parse_form({"lamp.note": "x" * 10}, cfg) == {"lamp": {"note": "x" * 10}}
    with pytest.raises(ConfigError, match=r"^Lamp note: 'xxxxxxxxxxx' is not a valid value$"):
        settings_form.parse_form({"lamp.note": "x" * 11}, cfg)


def test_every_text_on_the_page_declares_its_own_limit():
    texts = [(e.section, e.key) for e in settings_form.EDITABLE if e.kind == "text"]
    assert ("web", "time_zone") in texts and ("camera", "folder") in texts
    cfg = AppConfig()
    assert all(settings_form._declared(cfg, s, k).max_length for s, k in texts), texts
    assert not hasattr(settings_form, "MAX_TEXT") and not hasattr(settings_form, "PAGE_SECTIONS")


def test_the_settings_page_shows_a_labelled_bool_as_yes_and_no():
    """The page's own field loop (cut from settings.html) renders a bool as a yes/no choice showing its value."""
    import jinja2

    src = (DEVICE / "web" / "templates" / "settings.html").read_text()
    start = src.index("{% for section, key, label, kind in fields %}")
    loop = src[start:src.index("{% endfor %}", src.index("</label>", start)) + len("{% endfor %}")]
    cfg = _with_lamp_section()()
    fields = [e for e in settings_form.editable(cfg) if e.section == "lamp"]
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(loop).render(fields=fields, values={**settings_form.form_values(cfg), "lamp.on": "true"},
                                        _=lambda t: {"Yes": "Oui", "No": "Non"}.get(t, t), language_names={})
    assert '<select name="lamp.on"><option value="true" selected>Oui</option><option value="false" >Non</option>' \
        in html
    assert '<input name="lamp.note" value=""' in html


def test_what_a_training_machine_needs_pydantic_for_is_declared():
    """The recipes and the data loading import without pydantic; the commands that write or read a bundle (convert,
    model test) go through the device's metadata schema, so the 'train' extra installs pydantic."""
    import subprocess
    import tomllib

    code = ("import importlib, sys; sys.modules['pydantic'] = None; sys.modules['pydantic_core'] = None\n"
            "for m in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(m); print(m, 'ok')\n"
            "    except ImportError:\n"
            "        print(m, 'needs pydantic')\n")
    modules = ["training.config", "training.datasets", "training.data", "training.recorded", "training.cli",
               "convert.verify", "convert.build", "device.model.bundle"]
    out = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    found = dict(line.rsplit(" ", 1) if line.endswith(" ok") else line.split(" ", 1) for line in out.stdout.splitlines())
    assert {m for m, v in found.items() if v == "ok"} == set(modules[:5]), out.stdout
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.replace(" ", "").startswith("pydantic>=") for d in extras["train"])
