"""Dataset readers: turn a folder into records (image path, label, subject id or None).

Each reader maps the dataset's own class names onto the project vocabulary
(``device/data/labels.toml``) and says what it knows about the source, so a
run and its model bundle can name their data and its licence.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from device.model import vocabulary
from device.imageio import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Record:
    path: str  # absolute path of the image file
    relpath: str  # path below the dataset root, as recorded in manifests
    label: str  # a label of the project vocabulary
    subject: str | None  # patient / donor id where the dataset has one
    dataset: str  # name of the dataset it came from
    # Pixel size (um) when the source states or we measured it once for the whole set;
    # None: measured per image from its red cells (the configured fallback otherwise).
    um_per_px: float | None = None
    # "cell": a single-cell image (its central cell is used); "field": a field of view
    # with one label for the whole image (every white cell found gets that label).
    kind: str = "cell"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    licence: str
    citation: str
    subject_ids: bool
    um_per_px: float | None = None
    um_per_px_source: str = "measured per image from its red cells"
    kind: str = "cell"
    # What a clinic should read about the source, in plain words (lab, sample type, imaging).
    about: str = ""


@dataclass(frozen=True)
class Dataset:
    info: DatasetInfo
    root: Path
    records: list[Record]


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _require_dir(root: Path, what: str) -> Path:
    if not root.is_dir():
        raise FileNotFoundError(f"{what}: folder not found: {root}")
    return root


def _from_class_folders(root: Path, name: str, mapping: Callable[[str], str | None],
                        um_per_px: float | None = None, kind: str = "cell") -> list[Record]:
    records = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = mapping(folder.name)
        if label is None:
            continue
        vocabulary.label(label)  # fail early on a label outside the vocabulary
        for img in _images(folder):
            records.append(Record(str(img.resolve()), img.relative_to(root).as_posix(), label, None, name,
                                  um_per_px, kind))
    return records


def read_folder(root: str | Path, label_map: dict[str, str] | None = None, name: str = "folder",
                licence: str = "unknown", citation: str = "", um_per_px: float | None = None,
                kind: str = "cell") -> Dataset:
    """Generic folder-per-class layout. Folder names are vocabulary labels, or mapped by ``label_map``.
    ``kind`` "cell" (single-cell images) or "field" (one label per field of view)."""
    if kind not in ("cell", "field"):
        raise ValueError(f"{name}: kind must be 'cell' or 'field', not {kind!r}")
    root = _require_dir(Path(root), name)
    label_map = label_map or {}

    def mapping(folder: str) -> str:
        return label_map.get(folder, folder)

    records = _from_class_folders(root, name, mapping, um_per_px, kind)
    if not records:
        raise ValueError(f"{name}: no images found in class folders under {root}")
    where = "given in the recipe" if um_per_px else "measured per image from its red cells"
    return Dataset(DatasetInfo(name, licence, citation, False, um_per_px, where, kind), root, records)


PBC_INFO = DatasetInfo(
    "pbc-normal-wbc",
    "CC BY 4.0",
    "Acevedo A. et al. (2020), A dataset of microscopic peripheral blood cell images for development of "
    "automatic recognition systems, Data in Brief 30:105474; Mendeley Data doi:10.17632/snkd93bnjr.1",
    False,
    # The red-cell ruler (device/analysis/scale.py) on 300 random images: median 0.102, p10-p90 0.094-0.113.
    0.102, "red-cell ruler, median over the set (python -m bench.scale)",
    about="normal peripheral-blood cells of healthy donors, Hospital Clinic of Barcelona (CellaVision DM96, "
          "100x, May-Grunwald-Giemsa)",
)
PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def read_pbc(root: str | Path) -> Dataset:
    root = _require_dir(Path(root), PBC_INFO.name)
    records = _from_class_folders(root, PBC_INFO.name, lambda f: f if f in PBC_CLASSES else None,
                                  PBC_INFO.um_per_px)
    if not records:
        raise ValueError(f"{PBC_INFO.name}: none of the 8 class folders {PBC_CLASSES} found under {root}")
    return Dataset(PBC_INFO, root, records)


AML_INFO = DatasetInfo(
    "aml-cytomorphology-lmu",
    "CC BY 3.0",
    "Matek C. et al. (2019), A Single-cell Morphological Dataset of Leukocytes from AML Patients and "
    "Non-malignant Controls, The Cancer Imaging Archive, doi:10.7937/tcia.2019.36f5o9ld",
    False,
    # The red-cell ruler on the 74 of 160 images with enough red cells: median 0.075, p10-p90 0.068-0.087.
    0.075, "red-cell ruler, median over the set (python -m bench.scale)",
    about="peripheral-blood cells of AML patients and controls, Munich University Hospital (100x, M8 scanner)",
)
# MYB is a myelocyte, not a myeloblast: the blasts are MYO and MOB.
AML_CLASSES = {
    "MYO": "myeloblast", "MOB": "monoblast", "PMO": "promyelocyte", "PMB": "promyelocyte",
    "MYB": "myelocyte", "MMZ": "metamyelocyte", "NGB": "neutrophil-band", "NGS": "neutrophil",
    "LYT": "lymphocyte", "LYA": "atypical-lymphocyte", "MON": "monocyte", "EOS": "eosinophil",
    "BAS": "basophil", "EBO": "erythroblast", "KSC": "smudge-cell",
}


def read_aml_lmu(root: str | Path) -> Dataset:
    root = _require_dir(Path(root), AML_INFO.name)
    records = _from_class_folders(root, AML_INFO.name, AML_CLASSES.get, AML_INFO.um_per_px)
    if not records:
        raise ValueError(f"{AML_INFO.name}: no class folders ({', '.join(AML_CLASSES)}) under {root}")
    return Dataset(AML_INFO, root, records)


MLL_INFO = DatasetInfo(
    "bone-marrow-mll",
    "CC BY 4.0",
    "Matek C., Krappe S., Muenzenmayer C., Haferlach T., Marr C. (2021), Highly accurate differentiation of bone "
    "marrow cell morphologies using deep neural networks on a large image data set, Blood 138(20):1917-1927; "
    "data: The Cancer Imaging Archive, doi:10.7937/TCIA.AXH3-T579",
    False,
    # Marrow images show too few red cells for the ruler (15 of 300 confident, widely spread). The
    # median lymphocyte nucleus area matched to PBC's (whose scale the ruler measures) gives 0.088;
    # the same match on AML-LMU gives 0.078 against its ruler's 0.075.
    0.088, "lymphocyte nucleus area matched to PBC's (python -m bench.scale)",
    about="bone-marrow cells with leukaemic blasts, Munich Leukemia Laboratory (40x oil, Fraunhofer scanner, "
          "May-Grunwald-Giemsa/Pappenheim)",
)
# Blasts are not told apart (myeloid or lymphoid) in this set; promyelocytes are immature, not blasts.
MLL_CLASSES = {"BLA": "blast", "LYT": "lymphocyte", "MON": "monocyte", "NGS": "neutrophil", "EOS": "eosinophil",
               "PMO": "promyelocyte"}


def read_mll(root: str | Path) -> Dataset:
    """``<CLASS>/*.jpg`` of the Bone-Marrow-Cytomorphology_MLL subset (250 x 250, 40x)."""
    root = _require_dir(Path(root), MLL_INFO.name)
    records = _from_class_folders(root, MLL_INFO.name, MLL_CLASSES.get, MLL_INFO.um_per_px)
    if not records:
        raise ValueError(f"{MLL_INFO.name}: no class folders ({', '.join(MLL_CLASSES)}) under {root}")
    return Dataset(MLL_INFO, root, records)


TALEQANI_INFO = DatasetInfo(
    "taleqani-all",
    "see the dataset's own terms (Kaggle / Mendeley release by Aria et al. 2021)",
    "Aria M., Ghaderzadeh M., Bashash D. et al. (2021), Acute Lymphoblastic Leukemia (ALL) image dataset, "
    "Kaggle, doi:10.34740/KAGGLE/DSV/2175623; Ghaderzadeh M. et al., Int J Intell Syst 2022",
    False,
    None, "measured per field from its red cells", "field",
)
TALEQANI_CLASSES = {"Benign": "benign", "Early": "early-pre-b", "Pre": "pre-b", "Pro": "pro-b"}


def read_taleqani(root: str | Path) -> Dataset:
    """``Original/{Benign,Early,Pre,Pro}/*.jpg``: whole fields with a few white cells each, one label per
    field; no patient ids, exact duplicates in the published copy."""
    root = Path(root)
    if (root / "Original").is_dir():
        root = root / "Original"
    _require_dir(root, TALEQANI_INFO.name)
    records = _from_class_folders(root, TALEQANI_INFO.name, TALEQANI_CLASSES.get, None, "field")
    if not records:
        raise ValueError(f"{TALEQANI_INFO.name}: expected Original/{{Benign,Early,Pre,Pro}}/*.jpg under {root}")
    return Dataset(TALEQANI_INFO, root, records)


CNMC_INFO = DatasetInfo(
    "c-nmc-2019",
    "CC BY 3.0 (The Cancer Imaging Archive)",
    "Gupta A., Gupta R. (2019), ALL Challenge dataset of ISBI 2019 (C-NMC 2019), The Cancer Imaging Archive, "
    "doi:10.7937/tcia.2019.dc64i46r",
    True,
    # Segmented single cells on black: no red cells to measure, and no pixel size comes with
    # the copies we know. A nominal 100x value; a recipe can state the real one.
    0.1, "nominal 100x value (no red cells to measure)",
)
CNMC_NAME = re.compile(r"^UID_(?P<subject>[^_]+)_(?P<image>[^_]+)_(?P<cell>[^_]+)_(?P<cls>all|hem)\.bmp$", re.I)
CNMC_CLASSES = {"all": "lymphoblast", "hem": "normal-lymphoid"}


def read_cnmc(root: str | Path) -> Dataset:
    """``training_data/fold_*/{all,hem}/UID_<subject>_<image>_<cell>_{all,hem}.bmp``."""
    root = Path(root)
    if (root / "training_data").is_dir():
        root = root / "training_data"
    _require_dir(root, CNMC_INFO.name)
    records = []
    for fold in sorted(p for p in root.glob("fold_*") if p.is_dir()):
        for cls in ("all", "hem"):
            folder = fold / cls
            if not folder.is_dir():
                continue
            for img in _images(folder):
                m = CNMC_NAME.match(img.name)
                if not m:
                    raise ValueError(f"{CNMC_INFO.name}: unexpected file name {img.name} (UID_<subject>_<image>_<cell>_{{all,hem}}.bmp)")
                if m["cls"].lower() != cls:
                    raise ValueError(f"{CNMC_INFO.name}: {img.name} is in the '{cls}' folder but named '{m['cls']}'")
                records.append(Record(str(img.resolve()), img.relative_to(root).as_posix(), CNMC_CLASSES[cls],
                                      m["subject"], CNMC_INFO.name, CNMC_INFO.um_per_px))
    if not records:
        raise ValueError(f"{CNMC_INFO.name}: expected training_data/fold_*/{{all,hem}}/*.bmp under {root}")
    return Dataset(CNMC_INFO, root, records)


JIANGXI_INFO = DatasetInfo(
    "jiangxi-tecom-wbc",
    "GPL-3.0",
    "Zheng X., Wang Y., Wang G., Liu J. (2018), Fast and Robust Segmentation of White Blood Cell Images by "
    "Self-supervised Learning, Micron 107:55-71; images: Jiangxi Tecom Science Corporation, China",
    False,
    # Red cells of 120 x 120 frames: a handful each; their median diameter says about 0.14 um per pixel.
    0.14, "red-cell size over the set (python -m bench.scale)",
    about="normal peripheral-blood cells, Jiangxi Tecom (China): rapid stain with a yellow background, "
          "Motic camera on an N800-D microscope",
)
JIANGXI_CLASSES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}


def read_jiangxi(root: str | Path) -> Dataset:
    """``images/NNN.bmp`` with ``labels.csv`` (``image ID,class label``; 1-5). A test-only lab."""
    import csv

    root = _require_dir(Path(root), JIANGXI_INFO.name)
    table = root / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{JIANGXI_INFO.name}: labels.csv not found under {root}")
    records = []
    with open(table, newline="") as fh:
        for row in csv.reader(fh):
            if not row or not row[0].strip().isdigit():
                continue  # the header
            img = root / "images" / f"{int(row[0]):03d}.bmp"
            label = JIANGXI_CLASSES.get(int(row[1]))
            if label is None or not img.is_file():
                raise ValueError(f"{JIANGXI_INFO.name}: labels.csv row {row} names no image or no known class")
            records.append(Record(str(img.resolve()), img.relative_to(root).as_posix(), label, None,
                                  JIANGXI_INFO.name, JIANGXI_INFO.um_per_px))
    if not records:
        raise ValueError(f"{JIANGXI_INFO.name}: no rows in {table}")
    return Dataset(JIANGXI_INFO, root, records)


DISTRICT_INFO = DatasetInfo(
    "district",
    "the programme's own (patients' samples: keep inside the programme)",
    "Leukoscope district export (leukoscope district --export): cells confirmed by the district's experts",
    True,
    None, "as each box measured the field (manifest.csv, um_per_px)",
    about="Cells from the programme's own boxes, labelled by a haematologist at the district (remote review).",
)


def read_district(root: str | Path) -> Dataset:
    """``manifest.csv`` + ``<box>/<label>/*.jpg`` written by ``leukoscope district --export``. Each record's
    subject is its patient (box-local pseudonym, so split by patient), its dataset ``district-<box>`` (so a
    whole box can be held out as a lab is)."""
    import csv

    root = _require_dir(Path(root), DISTRICT_INFO.name)
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise FileNotFoundError(f"{DISTRICT_INFO.name}: no manifest.csv in {root} (made by leukoscope district --export)")
    records = []
    with open(manifest, newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), 2):
            try:
                label, rel, box = row["label"], row["path"], row["box"]
            except KeyError as exc:
                raise ValueError(f"{manifest}: column {exc} missing") from None
            vocabulary.label(label)  # a label outside the vocabulary fails here, naming the line
            img = (root / rel).resolve()
            if root.resolve() not in img.parents or not img.is_file():
                raise ValueError(f"{manifest} line {n}: image {rel!r} not found under {root}")
            um = float(row["um_per_px"]) if row.get("um_per_px") else None
            records.append(Record(str(img), rel, label, row.get("patient") or None, f"district-{box}", um, "cell"))
    if not records:
        raise ValueError(f"{DISTRICT_INFO.name}: {manifest} lists no cells")
    return Dataset(DISTRICT_INFO, root, records)


READERS: dict[str, Callable[..., Dataset]] = {
    "district": read_district,
    "folder": read_folder,
    "pbc": read_pbc,
    "aml-lmu": read_aml_lmu,
    "mll": read_mll,
    "taleqani": read_taleqani,
    "cnmc": read_cnmc,
    "jiangxi": read_jiangxi,
}


def about_of(name: str) -> str:
    """The plain-words description of a known source (older run folders did not record it)."""
    known = {i.name: i.about for i in (PBC_INFO, AML_INFO, MLL_INFO, TALEQANI_INFO, CNMC_INFO, JIANGXI_INFO)}


    known = {i.name: i.about for i in (PBC_INFO, AML_INFO, MLL_INFO, TALEQANI_INFO, CNMC_INFO, DISTRICT_INFO)}
    return known.get(name, "")


def read_source(kind: str, path: str | Path, **options) -> Dataset:
    try:
        reader = READERS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; known: {sorted(READERS)}") from None
    return reader(path, **options)
