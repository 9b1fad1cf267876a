from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit import PBC, REPO, write_image
from testkit.web import InProcessBase, InProcessSession, csrf_of, serving

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# -- markers: what makes a test slow ---------------------------------------------------------------------
# Each slow kind has its marker (pyproject.toml); every test with one is also `slow`, so that
# `scripts/test.sh -m "not slow"` is the quick loop and `-m browser` (etc.) picks one kind. A test is
# marked by its module or itself; the fixtures below mark whatever uses them, so a new test cannot forget.
SLOW_KINDS = ("bench", "tensorflow", "browser", "arm64", "district")
SLOW_FIXTURES = {"tiny_run": "tensorflow", "tiny_bundle": "tensorflow", "browser": "browser", "chroot": "arm64",
                 "orthanc": "district"}
SLOW_TIMEOUT = 1200  # seconds, for a slow test without a time-out of its own (pyproject's is for the rest)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, kind in SLOW_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker(kind):
                item.add_marker(kind)
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker("slow")
            if not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT))


@pytest.fixture(autouse=True)
def _browser_left_clean(request):
    """A module's shared Chromium (a ``browser`` fixture) outlives each test: a test that fails half-way
    leaves its pages open, their live views still polling. Close every context after each test, and fail
    the next test at once, saying why, if Chromium has died -- not after a time-out."""
    if "browser" in request.fixturenames:
        assert request.getfixturevalue("browser").is_connected(), "Chromium exited during an earlier test"
    yield
    if "browser" in request.fixturenames:
        b = request.getfixturevalue("browser")
        if b.is_connected():
            for ctx in list(b.contexts):
                ctx.close()


@pytest.fixture
def taleqani_copy(tmp_path) -> Path:
    """The published Taleqani layout (whole fields, one label each), including exact duplicate
    files: real PBC cells pasted at a lower magnification onto real BCCD backgrounds."""
    from tests.fieldgen import make_taleqani

    root = tmp_path / "ALL_dataset"
    make_taleqani(root, {"Benign": PBC / "lymphocyte", "Early": PBC / "monocyte", "Pre": PBC / "neutrophil",
                         "Pro": PBC / "eosinophil"}, per_class=6, um_per_px=0.17, seed=11)
    # two exact duplicates within a class, and one identical file under two classes
    (root / "Original/Pre/WBC-Pre-dup.jpg").write_bytes((root / "Original/Pre/WBC-Pre-000.jpg").read_bytes())
    (root / "Original/Pro/WBC-Pro-dup.jpg").write_bytes((root / "Original/Pro/WBC-Pro-001.jpg").read_bytes())
    (root / "Original/Early/WBC-Early-x.jpg").write_bytes((root / "Original/Benign/WBC-Benign-002.jpg").read_bytes())
    # the real release also has a Segmented folder, which must be ignored
    write_image(root / "Segmented" / "Benign" / "seg.jpg", 999)
    return root


@pytest.fixture
def cnmc_copy(tmp_path) -> Path:
    """C-NMC 2019: training_data/fold_*/{all,hem}/UID_<subject>_<image>_<cell>_{all,hem}.bmp."""
    root = tmp_path / "C-NMC_Leukemia" / "training_data"
    seed = 100
    for fold in range(3):
        for subj in range(4):
            for cls, prefix in (("all", ""), ("hem", "H")):
                subject = f"{prefix}{fold * 10 + subj}"
                for img in range(1, 3):
                    for cell in range(1, 3):
                        seed += 1
                        write_image(root / f"fold_{fold}" / cls / f"UID_{subject}_{img}_{cell}_{cls}.bmp", seed, fmt="BMP")
    return root.parent


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One real TensorFlow training on a tiny slice of the real PBC data, shared by the tests."""
    pytest.importorskip("tensorflow")
    from training.config import recipe_from_dict
    from training.train import train

    recipe = recipe_from_dict({
        "task": "differential", "name": "tiny", "seed": 5,
        "data": {"sources": [{"kind": "pbc", "path": str(PBC)}], "max_per_class": 10},
        "preprocessing": {"input_size": 32},
        "model": {"name": "leukonet", "width": 0.25},
        # Enough to learn something (a collapsed one-class model would make parity meaningless).
        "train": {"epochs": 8, "batch_size": 16, "warmup_epochs": 0, "learning_rate": 0.01},
    })
    return train(recipe, out_root=tmp_path_factory.mktemp("runs"), config_text="# tiny\n", log=lambda *_: None)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory):
    """The tiny run converted to a real int8 bundle."""
    from convert.build import convert_run

    out = tmp_path_factory.mktemp("bundles") / "tiny-int8.lkb"
    return convert_run(tiny_run, out=out, representative_count=48, parity_floor=0.9, log=lambda *_: None)


@pytest.fixture
def live_app(tmp_path):
    """The real app on a real waitress server on 127.0.0.1 with a runtime of its own (real start-up: the
    consistency check, the model's trial run, the camera thread): for what needs a socket -- streams,
    concurrency, time-outs, raw paths, a browser -- and for the sign-in path itself."""
    with serving(tmp_path) as (base, app, rt):
        yield base, app, rt, tmp_path


# -- the app in process (Flask's tutorial pattern) ------------------------------------------------------
ADMIN, ADMIN_PASSWORD = "admin", "correct-horse-9"


@pytest.fixture(scope="session")
def bundled_model(tmp_path_factory):
    """The bundled default model, loaded and trial-run by the real LiteRT interpreter once per session:
    (bundle, classifier, problems) as the appliance's start-up finds it."""
    from device.model.installed import load_active

    return load_active("", tmp_path_factory.mktemp("no-installed-model"), 1)


def _runtime(data_dir: Path, fields: Path, bundled_model):
    """A real runtime (real SQLite in data_dir, replay camera over a copy of the bundled fields, the
    capture loop started) that classifies with the session's model unless one is installed or named."""
    import shutil
    import sys

    from device.box.runtime import build_runtime
    from device.config import AppConfig

    if not fields.exists():
        shutil.copytree(REPO / "device/assets/fields", fields)
    cfg = AppConfig()
    cfg.storage.data_dir = str(data_dir)
    cfg.camera.folder = str(fields)
    cfg.sample.target_cells = 5
    cfg.web.clinic_name = "Test Clinic Ngong"
    module = sys.modules[build_runtime.__module__]
    real = module.load_active

    def load_active(configured, data_dir, threads):
        # the same rule as start-up (installed.candidates: the named one, current, previous, then the shipped
        # default); only the shipped default's load and trial run are shared, and only at the default thread count
        from device.model.installed import candidates, default_bundle_path

        if threads != 1 or any(p.exists() for p in candidates(configured, data_dir) if p != default_bundle_path()):
            return real(configured, data_dir, threads)
        bundle, classifier, problems = bundled_model
        return bundle, classifier, list(problems)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "load_active", load_active)  # fails loudly if the runtime no longer uses it
        return build_runtime(cfg)


@pytest.fixture(scope="session")
def _admin_template(tmp_path_factory, bundled_model):
    """A data folder whose administrator was created once through the real first-start page (one scrypt
    hash per session), and that administrator's session cookie: each test gets a copy of both."""
    from device.web import create_app

    root = tmp_path_factory.mktemp("admin-template")
    rt = _runtime(root / "data", root / "fields", bundled_model)
    try:
        s = InProcessSession(create_app(rt))
        page = s.get("/setup")
        r = s.post("/setup", data={"csrf_token": csrf_of(page.text), "username": ADMIN, "password": ADMIN_PASSWORD,
                                   "confirm": ADMIN_PASSWORD})
        assert r.ok and r.url.endswith("/"), (r.status_code, r.url)
        cookie = s.cookie()
        assert cookie, "the first-start page set no session cookie"
    finally:
        rt.stop()
    return root / "data", cookie


@pytest.fixture
def box_runtime(tmp_path, bundled_model, _admin_template):
    """A real runtime per test on its own data folder (a copy of the template: an administrator exists),
    stopped afterwards."""
    import shutil

    template, _ = _admin_template
    # not the 16 MB free-space reserve (the store makes its own) nor the template's lock file
    shutil.copytree(template, tmp_path / "data", ignore=shutil.ignore_patterns("reserve.bin", "*.lock"))
    rt = _runtime(tmp_path / "data", tmp_path / "fields", bundled_model)
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
def blank_page_app(tmp_path, bundled_model):
    """(base, app, runtime, tmp_path) in process on an empty data folder: the first start, before an
    administrator exists (``signed_in(base)`` creates one through the set-up page)."""
    from device.web import create_app

    rt = _runtime(tmp_path / "data", tmp_path / "fields", bundled_model)
    try:
        app = create_app(rt)
        yield InProcessBase(app), app, rt, tmp_path
    finally:
        rt.stop()


@pytest.fixture
def app(box_runtime):
    """The real Flask app over ``box_runtime`` (TESTING off: errors render as the server renders them)."""
    from device.web import create_app

    return create_app(box_runtime)


@pytest.fixture
def client(app):
    """An anonymous requests-like client answered in process; URLs are paths or ``IN_PROCESS + path``."""
    return InProcessSession(app)


@pytest.fixture
def admin(app, _admin_template):
    """A requests-like client already signed in as the administrator (the template's session)."""
    s = InProcessSession(app)
    s.set_cookie(_admin_template[1])
    assert s.get("/settings", allow_redirects=False).status_code == 200, "the administrator's session was refused"
    return s


@pytest.fixture
def page_app(app, box_runtime, tmp_path):
    """(base, app, runtime, tmp_path) like ``live_app``, answered in process: pair it with ``admin``;
    ``signed_in(base, ...)`` and ``base.session()`` give other clients of the same app."""
    return InProcessBase(app), app, box_runtime, tmp_path
