from __future__ import annotations

import os
from pathlib import Path

import pytest

from testkit import PBC, write_image
from testkit.web import serving

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
    with serving(tmp_path) as (base, app, rt):
        yield base, app, rt, tmp_path
