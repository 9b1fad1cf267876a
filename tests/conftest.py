from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()
PBC = SHARED_DATA / "pbc-normal-wbc"
AML = SHARED_DATA / "aml-cytomorphology-lmu-subset"
BCCD = SHARED_DATA / "bccd"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_image(path: Path, seed: int, size: int = 32, fmt: str | None = None) -> Path:
    """A small, distinct image (seeded noise on a blob) in the format the suffix names."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(tmp_path: Path, **settings):
    """The real app and runtime, served by waitress on 127.0.0.1 in this process:
    yields (base URL, app, runtime). Replay camera over a copy of the bundled fields."""
    import shutil
    import threading

    import waitress

    from device.config import AppConfig
    from device.box.runtime import build_runtime
    from device.web import create_app

    cfg = AppConfig()
    cfg.storage.data_dir = str(settings.get("data_dir", tmp_path / "data"))
    shutil.copytree(REPO / "device/assets/fields", tmp_path / "fields")
    cfg.camera.folder = str(tmp_path / "fields")
    cfg.sample.target_cells = settings.get("target_cells", 5)
    cfg.web.clinic_name = settings.get("clinic_name", "Test Clinic Ngong")
    rt = build_runtime(cfg)
    app = create_app(rt)
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=8)
    closing = threading.Event()

    def serve():
        try:
            server.run()
        except OSError:
            if not closing.is_set():  # closing from another thread can wake select() on a closed socket
                raise

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}", app, rt
    finally:
        closing.set()
        server.close()
        thread.join(3)  # a daemon thread: an open live-view socket may keep its loop alive a little
        rt.stop()


@pytest.fixture
def live_app(tmp_path):
    with serving(tmp_path) as (base, app, rt):
        yield base, app, rt, tmp_path


def csrf_of(html: str) -> str:
    import re

    m = re.search(r'name="csrf_token" value="([^"]+)"', html) or re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


def signed_in(base: str, username: str = "admin", password: str = "correct-horse-9", create: bool = True):
    """A requests session signed in over real HTTP (creating the administrator on first start)."""
    import requests

    s = requests.Session()
    r = s.get(base + "/")
    if create and r.url.endswith("/setup"):
        r = s.post(base + "/setup", data={"csrf_token": csrf_of(r.text), "username": username,
                                          "password": password, "confirm": password})
        assert r.ok, r.text
        return s
    r = s.get(base + "/login")
    r = s.post(base + "/login", data={"csrf_token": csrf_of(r.text), "username": username, "password": password})
    assert r.ok and "/login" not in r.url, r.text[:500]
    return s
