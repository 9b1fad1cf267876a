from __future__ import annotations

import pytest

from testkit import AML, PBC, SHARED_DATA as SHARED, write_image
from training import splits
from training.datasets import read_aml_lmu, read_cnmc, read_folder, read_pbc, read_source, read_taleqani


def test_pbc_reader_reads_all_eight_classes_of_the_real_copy():
    ds = read_pbc(PBC)
    counts = {}
    for r in ds.records:
        counts[r.label] = counts.get(r.label, 0) + 1
    assert counts == {"basophil": 500, "eosinophil": 500, "erythroblast": 500, "ig": 500,
                      "lymphocyte": 1214, "monocyte": 1420, "neutrophil": 500, "platelet": 500}
    assert all(r.subject is None for r in ds.records)
    assert ds.info.licence == "CC BY 4.0"


def test_aml_reader_maps_blasts_and_keeps_myelocyte_apart():
    ds = read_aml_lmu(AML)
    by_code = {}
    for r in ds.records:
        by_code.setdefault(r.relpath.split("/")[0], set()).add(r.label)
    assert by_code["MYO"] == {"myeloblast"}
    assert by_code["MOB"] == {"monoblast"}
    assert by_code["MYB"] == {"myelocyte"}  # MYB is a myelocyte, not a myeloblast
    from device.model.vocabulary import category_of
    blasts = [r for r in ds.records if category_of(r.label) == "malignant"]
    assert len(blasts) == 22
    assert len(ds.records) == 160


def test_taleqani_reader_layout_and_duplicates(taleqani_copy):
    ds = read_taleqani(taleqani_copy)
    assert {r.label for r in ds.records} == {"benign", "early-pre-b", "pre-b", "pro-b"}
    assert len(ds.records) == 27  # 24 + 3 copies; Segmented/ ignored
    assert all(r.relpath.count("/") == 1 for r in ds.records)
    dedup = splits.deduplicate(ds.records)
    assert dedup.duplicates_removed == 2
    # the same file labelled Benign and Early cannot be trusted: both copies go
    assert dedup.conflicting_removed == 2
    assert len(dedup.records) == 23
    assert len(set(dedup.sha256.values())) == len(dedup.records)


def test_cnmc_reader_parses_subjects(cnmc_copy):
    ds = read_cnmc(cnmc_copy)
    assert len(ds.records) == 3 * 4 * 2 * 4
    assert {r.label for r in ds.records} == {"lymphoblast", "normal-lymphoid"}
    r = next(r for r in ds.records if r.relpath.endswith("UID_H21_1_2_hem.bmp"))
    assert r.subject == "H21" and r.label == "normal-lymphoid"
    assert ds.info.subject_ids


def test_cnmc_reader_rejects_a_misfiled_image(cnmc_copy):
    write_image(cnmc_copy / "training_data/fold_0/all/UID_7_1_1_hem.bmp", 5, fmt="BMP")
    with pytest.raises(ValueError, match="is in the 'all' folder"):
        read_cnmc(cnmc_copy)


def test_generic_folder_reader_with_label_map(tmp_path):
    for i in range(3):
        write_image(tmp_path / "lymph" / f"{i}.png", i)
        write_image(tmp_path / "blast" / f"{i}.png", 10 + i)
    ds = read_source("folder", tmp_path, label_map={"lymph": "lymphocyte", "blast": "lymphoblast"})
    assert sorted({r.label for r in ds.records}) == ["lymphoblast", "lymphocyte"]
    with pytest.raises(KeyError, match="unknown label 'lymph'"):  # 'blast' is a vocabulary label
        read_folder(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        read_pbc(tmp_path / "nope")


def test_every_source_maps_onto_the_screen_task():
    """The blast screen's labels from each source: PBC's normal differential, the bone-marrow set's
    blasts (BLA) and promyelocytes (as immature granulocytes), AML-LMU's myeloblasts and monoblasts."""
    from device.model.vocabulary import category_of, task_label, task_labels
    from training.datasets import read_source

    screen = set(task_labels("screen"))
    assert category_of("blast") == "malignant" and category_of("ig") == "atypical"
    mll = read_source("mll", SHARED / "bone-marrow-mll-subset")
    by_code = {}
    for r in mll.records:
        by_code.setdefault(r.relpath.split("/")[0], set()).add(task_label("screen", r.label))
    assert by_code == {"BLA": {"blast"}, "LYT": {"lymphocyte"}, "MON": {"monocyte"}, "NGS": {"neutrophil"},
                       "EOS": {"eosinophil"}, "PMO": {"ig"}}
    aml = read_source("aml-lmu", SHARED / "aml-cytomorphology-lmu-subset")
    aml_by = {}
    for r in aml.records:
        aml_by.setdefault(r.relpath.split("/")[0], set()).add(task_label("screen", r.label))
    assert aml_by["MYO"] == aml_by["MOB"] == {"blast"}
    assert aml_by["PMO"] == aml_by["MYB"] == aml_by["MMZ"] == {"ig"} and aml_by["NGB"] == {"neutrophil"}
    assert aml_by["LYA"] == {None} and aml_by["KSC"] == {None}  # not part of the screen: left out
    pbc = read_source("pbc", SHARED / "pbc-normal-wbc")
    assert {task_label("screen", r.label) for r in pbc.records} == screen - {"blast"}
