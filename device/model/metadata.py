"""A bundle's ``metadata.json``: one typed schema. ``convert`` writes it (``convert.build``), the device reads
and validates it (``device.model.bundle.load_bundle``) and shows its figures (``device.web.words``).

Every field the device reads has a type and a range here; fields it does not read pass through untouched
(``extra="allow"``), so a bundle written by a newer converter still loads. Every refusal is one sentence in
the operator's words, naming the field (``MetadataError``)."""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    StrictInt,
    StrictStr,
    ValidationError,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from device.analysis.preprocess import Preprocessing
from device.model import vocabulary

FORMAT = "leukoscope-bundle/1"
REQUIRED = ("name", "version", "task", "labels", "input", "preprocessing", "sha256")


class MetadataError(ValueError):
    """metadata.json refused; ``str()`` is the operator's sentence (``load_bundle`` puts the file's name first)."""


def _refuse(message: str, own: bool = False) -> PydanticCustomError:
    """A refusal: "metadata.json: <message>", or the message alone (``own``) where it names the problem itself."""
    return PydanticCustomError("own" if own else "metadata", "{m}", {"m": message})


def _says(message):
    """Whatever the inner type finds wrong, the operator reads ``message`` (a text, or a function of the value)."""
    def wrap(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise _refuse(message(value) if callable(message) else message) from None

    return WrapValidator(wrap)


def _object(what: str):
    def check(value):
        if not isinstance(value, dict):
            raise _refuse(f"'{what}' must be an object")
        return value

    return BeforeValidator(check)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _nonblank(text: str) -> str:
    if not text.strip():
        raise ValueError("blank")
    return text


def _text(key: str):
    return Annotated[StrictStr, Field(max_length=100), AfterValidator(_nonblank),
                     _says(f"'{key}' must be a non-empty text of at most 100 characters")]


class _Open(BaseModel):
    """A part of the metadata whose other keys pass through (written by a newer converter, or read elsewhere)."""
    model_config = ConfigDict(extra="allow", frozen=True)


# ---- what the device needs to run the model -------------------------------------------------------------

class Label(_Open):
    name: str
    category: str
    display: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _in_vocabulary(cls, entry):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _refuse("each label must be an object with a 'name'")
        name, cat = entry["name"], entry.get("category")
        if cat not in vocabulary.CATEGORIES:
            raise _refuse(f"label {name!r} has unknown category {cat!r}", own=True)
        try:
            known = vocabulary.category_of(name)
        except KeyError:
            raise _refuse(f"label {name!r} is not in this device's vocabulary; update the device software first",
                          own=True) from None
        if known != cat:
            raise _refuse(f"label {name!r} is {known!r} in the vocabulary, the bundle says {cat!r}", own=True)
        return entry


def _label_list(value):
    if value in ([], None):
        raise _refuse("the bundle names no labels", own=True)
    if not isinstance(value, list):
        raise _refuse("'labels' must be a list")
    if len(value) > 256:
        raise _refuse("more than 256 labels")
    return value


def _distinct(labels: list[Label]) -> list[Label]:
    seen = set()
    for entry in labels:
        if entry.name in seen:
            raise _refuse(f"label {entry.name!r} appears twice")
        seen.add(entry.name)
    return labels


class InputSpec(_Open):
    size: Annotated[StrictInt, Field(ge=8, le=1024), _says("'input.size' must be a whole number from 8 to 1024")]
    dtype: Annotated[Literal["int8", "uint8", "float32", "float16"],
                     _says(lambda v: f"'input.dtype' {v!r} is not int8, uint8, float32 or float16")]
    quantization: str | None = None  # the variant: "int8", "float16", "dynamic"; names the metrics to show
    color_order: str | None = None
    normalization: str | None = None
    scale: float | None = None
    zero_point: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _present(cls, raw):  # a missing size or dtype is refused in the same words as a wrong one
        if isinstance(raw, dict) and "size" not in raw:
            raise _refuse("'input.size' must be a whole number from 8 to 1024")
        if isinstance(raw, dict) and "dtype" not in raw:
            raise _refuse("'input.dtype' None is not int8, uint8, float32 or float16")
        return raw


class Checksums(_Open):
    model_tflite: Annotated[StrictStr, Field(alias="model.tflite", min_length=64, max_length=64)]


class Thresholds(_Open):
    """Probabilities (review, malignant, malignant_review) and the unfamiliar-cell limit (ood); any other key a
    number too."""
    review: float | None = None
    malignant: float | None = None
    malignant_review: float | None = None
    ood: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, raw):
        if not isinstance(raw, dict):
            raise _refuse("'thresholds' must be an object")
        for key, value in raw.items():
            if not _is_number(value):
                raise _refuse(f"threshold {key!r} must be a number, not {value!r}")
        for key in ("review", "malignant", "malignant_review"):
            if key in raw and not 0.0 <= raw[key] <= 1.0:
                raise _refuse(f"threshold {key!r} must be between 0 and 1")
        if raw.get("malignant_review", 0.0) > raw.get("malignant", 1.0):
            raise _refuse("threshold 'malignant_review' must not be above the operating point 'malignant'")
        if "ood" in raw and raw["ood"] <= 0:
            raise _refuse("threshold 'ood' must be positive")
        return raw


class Output(_Open):
    name: StrictStr


def _preprocessing(raw) -> Preprocessing:
    if not isinstance(raw, dict):
        raise _refuse("'preprocessing' must be an object")
    try:
        pp = Preprocessing.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise _refuse(f"pre-processing settings are invalid ({exc})", own=True) from None
    if not _is_number(pp.crop_fraction) or not _is_number(pp.cell_context) or not 0.5 <= pp.cell_context <= 8:
        raise _refuse("pre-processing 'crop_fraction' and 'cell_context' must be numbers (cell_context 0.5 to 8)")
    if pp.stain_reference is not None and (len(pp.stain_reference) != 2 or any(
            len(v) != 3 or not all(map(math.isfinite, v)) for v in pp.stain_reference)):
        raise _refuse("pre-processing 'stain_reference' must be two rows of three numbers (Lab mean and spread)")
    return pp


# ---- what the page, the report and `leukoscope model info` show --------------------------------------------

class Dataset(_Open):
    name: str
    licence: str | None = None
    citation: str | None = None
    split_unit: str | None = None


class Split(_Open):
    unit: str | None = None  # "subject", or "image" where the data has no patient ids


class Metrics(_Open):
    """One variant's figures on the held-out test split."""
    n: int | None = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    malignant: dict | None = None  # the blast operating point: validation and test figures


class Parity(_Open):
    top1_agreement: float


class CardText(_Open):
    """A card given as fields rather than Markdown: each part the result page shows."""
    trained_on: str | None = None
    figures: str | None = None
    operating_point: str | None = None
    not_validated_on: str | None = None


class PlainFigures(_Open):
    """The cross-lab figures the result page turns into its translated sentence (the worst lab)."""
    review_per_100: int
    blast_per_1000: int
    labs: list[str] = Field(default_factory=list)


class CrossLab(_Open):
    text: str | None = None  # the bundle's own words (bench.cross_lab)
    plain: PlainFigures | None = None


def _described(model, message: str):
    """An optional part the device only describes; when present, it has the shape the page reads."""
    return Annotated[model | None, _says(message)]


class Metadata(_Open):
    format: str
    name: _text("name")
    version: _text("version")
    task: _text("task")
    labels: Annotated[list[Label], BeforeValidator(_label_list), AfterValidator(_distinct)]
    input: Annotated[InputSpec, _object("input")]
    sha256: Annotated[Checksums, _says("'sha256' must map 'model.tflite' to a 64-digit hex checksum")]
    thresholds: Thresholds = Field(default_factory=Thresholds)
    outputs: Annotated[dict[str, Output], _says("'outputs' must map each output to an object with a 'name'")] = \
        Field(default_factory=dict)
    preprocessing: Annotated[InstanceOf[Preprocessing], BeforeValidator(_preprocessing)]
    ood_calibration: str | None = None  # "per-class": thresholds.ood is a ratio to each class's own spread
    # described on the page, in the report and by `model info`
    created_at: str | None = None
    model: str | None = None
    datasets: _described(list[Dataset], "'datasets' must be a list of objects with a 'name'") = None
    split: _described(Split, "'split' must be an object") = None
    metrics: _described(dict[str, Metrics], "'metrics' must map each variant to an object of figures") = None
    parity: _described(Parity, "'parity' must be an object with 'top1_agreement'") = None
    model_card: _described(str | CardText, "'model_card' must be a text (Markdown) or an object of texts") = None
    trained_on: _described(str, "'trained_on' must be a text") = None
    figures: _described(str, "'figures' must be a text") = None
    operating_point: _described(str, "'operating_point' must be a text") = None
    not_validated_on: _described(str, "'not_validated_on' must be a text") = None
    cross_lab: _described(CrossLab, "'cross_lab' must be an object (its 'plain' figures whole numbers)") = None

    @model_validator(mode="before")
    @classmethod
    def _format_and_required(cls, raw):
        if not isinstance(raw, dict):
            raise _refuse("must be a JSON object")
        if raw.get("format") != FORMAT:
            raise _refuse(f"unsupported bundle format {raw.get('format')!r} (this device reads {FORMAT})", own=True)
        for key in REQUIRED:
            if key not in raw:
                raise _refuse(f"metadata.json lacks '{key}'", own=True)
        return raw

    @model_validator(mode="after")
    def _consistent(self):
        pp = self.preprocessing
        ood = self.thresholds.ood
        if ood is not None and self.ood_calibration == "per-class" and not 0.5 <= ood <= 2.0:
            raise _refuse("threshold 'ood' of a per-class calibration is a ratio near 1")
        if pp.input_size != self.input.size:
            raise _refuse(f"pre-processing input size {pp.input_size} differs from input.size {self.input.size}")
        return self

    # -- the figures, typed ------------------------------------------------------------------------------
    @property
    def test_metrics(self) -> Metrics | None:
        """The shipped variant's figures on the held-out test split."""
        return (self.metrics or {}).get(self.input.quantization) if self.input.quantization else None

    @property
    def card(self) -> CardText:
        return self.model_card if isinstance(self.model_card, CardText) else CardText()

    @property
    def card_markdown(self) -> str | None:
        return self.model_card if isinstance(self.model_card, str) else None

    def part(self, key: str) -> str | None:
        """A part of the card the result page shows (``trained_on``, ``figures``, ``operating_point``,
        ``not_validated_on``): from the card's fields, else the metadata's own."""
        return getattr(self.card, key) or getattr(self, key)

    def trained_on_line(self) -> str | None:
        """What the card's "Trained on" line says, from the datasets and the split (bundles whose metadata has
        no ``trained_on`` of its own)."""
        if not self.datasets:
            return None
        unit = (self.split.unit if self.split else None) or self.datasets[0].split_unit
        return trained_on_line([(d.name, d.licence) for d in self.datasets], unit)


def parse(raw: Any) -> Metadata:
    """The typed metadata, or MetadataError naming the first problem in the operator's words."""
    try:
        return Metadata.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        if err["type"] == "own":
            raise MetadataError(err["msg"]) from None
        if err["type"] == "metadata":
            raise MetadataError(f"metadata.json: {err['msg']}") from None
        where = ".".join(str(p) for p in err["loc"])
        raise MetadataError(f"metadata.json: '{where}' {err['msg'][:1].lower()}{err['msg'][1:]}") from None


# ---- the card's prose, written by convert and read back for bundles that carry no typed part ---------------

def trained_on_line(datasets: list[tuple[str, str | None]], unit: str | None) -> str:
    """The card's "Trained on" line: each dataset with its licence, and how the split was cut."""
    note = "" if unit == "subject" else " (the data has no subject ids, so cells of one donor may be on both sides)"
    return "; ".join(f"{name} ({licence})" for name, licence in datasets) + f". Split by {unit}{note}."


SCREEN_NOT_VALIDATED = (
    "lymphoblasts (ALL) in peripheral blood from a lab it was not trained on; children's samples; bone marrow "
    "from other labs; smears photographed through the appliance's own camera and microscope; stains other than "
    "May-Grunwald-Giemsa; lymphoma cells, myelodysplasia and other atypical cells")


def validation_text(task: str) -> str:
    """The card's "What it was and was not validated on" section, per task."""
    if task == "differential":
        return ("Validated only on held-out images of the same dataset (normal cells from healthy donors, one lab, "
                "one CellaVision scanner, image-level split). It has never seen a leukaemic blast: it is **not a "
                "validated leukaemia screen**. Blasts and other unfamiliar cells should be caught by the uncertainty "
                "and unfamiliar-cell checks and left for review, but that is a safety net, not a detector. Not "
                "validated on other stains, microscopes or cameras, on bone marrow, or on field crops from the "
                "appliance's own camera.")
    if task == "screen":
        return ("Trained on normal blood cells from two labs and on bone-marrow blasts from one lab (see Trained on). "
                "Its figures on labs it never saw are in `cross_lab` (python -m bench.cross_lab). Never validated "
                "on: " + SCREEN_NOT_VALIDATED + ".")
    return ("Validated only on the held-out split recorded in test_files.csv. Not validated across laboratories, "
            "stains, microscopes or cameras.")
