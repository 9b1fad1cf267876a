"""A bundle's ``metadata.json``: one typed schema. ``convert`` writes it (``convert.build``), the device reads
and validates it (``device.model.bundle.load_bundle``) and shows its figures (``device.web.words``).

Every field the device reads has a type and a range here; fields it does not read pass through untouched
(``extra="allow"``), so a bundle written by a newer converter still loads. What the device needs to run the model
(format, labels, input size and type, checksum, thresholds, outputs, pre-processing) is checked strictly: every
refusal is one sentence in the operator's words, naming the field (``MetadataError``). What only describes the
model (its card, datasets, figures, dates) is read leniently: a malformed part is left out with a note
(``Metadata.notes``, logged at load and shown by ``leukoscope model info``) and the bundle still loads, as it did
before the schema existed."""
from __future__ import annotations

import copy
import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    PrivateAttr,
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

    def as_written(self) -> dict:
        """The part as JSON, with the keys the bundle gave (what ``model info`` prints)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


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
    """One variant's figures on the held-out test split. Declared in the order convert writes them (``Any``: the
    device does not read those), so ``as_written`` gives them back in that order."""
    n: int | None = None
    accuracy: Any = None
    balanced_accuracy: float | None = None
    macro_f1: float | None = None
    weighted_f1: Any = None
    macro_roc_auc: Any = None
    ece: Any = None
    per_class_sensitivity: Any = None
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
    # described on the page, in the report and by `model info` (see DESCRIBED: a malformed one is left out)
    ood_calibration: str | None = None  # "per-class": thresholds.ood is a ratio to each class's own spread
    created_at: str | None = None
    model: str | None = None
    datasets: list[Dataset] | None = None
    split: Split | None = None
    metrics: dict[str, Metrics] | None = None
    parity: Parity | None = None
    model_card: str | CardText | None = None
    trained_on: str | None = None
    figures: str | None = None
    operating_point: str | None = None
    not_validated_on: str | None = None
    cross_lab: CrossLab | None = None
    _notes: list[str] = PrivateAttr(default_factory=list)

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

    @property
    def notes(self) -> list[str]:
        """What was left out of the metadata as malformed, one operator sentence each."""
        return list(self._notes)

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



# The parts that only describe the model: how each must look, and how deep a malformed one is cut out (1: the
# whole field; 2: the one entry of a list or map, or the one key of an object, that is malformed).
DESCRIBED = {
    "ood_calibration": ("must be a text", 1), "created_at": ("must be a text", 1), "model": ("must be a text", 1),
    "datasets": ("must be a list of objects with a 'name'", 2), "split": ("must be an object", 1),
    "metrics": ("must map each variant to an object of figures", 2),
    "parity": ("must be an object with 'top1_agreement'", 1),
    "model_card": ("must be a text (Markdown) or an object of texts", 1),
    "trained_on": ("must be a text", 1), "figures": ("must be a text", 1), "operating_point": ("must be a text", 1),
    "not_validated_on": ("must be a text", 1),
    "cross_lab": ("must be an object with a 'text' and 'plain' figures in whole numbers", 2),
}
DESCRIBED_INPUT = {"quantization": "must be a text", "color_order": "must be a text", "normalization": "must be a text",
                   "scale": "must be a number", "zero_point": "must be a whole number"}


def _descriptive(raw: dict, loc: tuple) -> tuple[tuple, str] | None:
    """(the path to leave out, the operator's sentence) for an error in a part that only describes the model, else
    None (the error is the model's and refuses the bundle)."""
    loc = tuple(loc)
    if not loc:
        return None
    key = loc[0]
    if key in DESCRIBED:
        what, depth = DESCRIBED[key]
        deep = depth == 2 and len(loc) >= 2 and isinstance(raw.get(key), (list, dict))
        return (loc[:2] if deep else loc[:1]), f"'{key}' {what}"
    if key == "input" and len(loc) == 2 and loc[1] in DESCRIBED_INPUT:
        return loc, f"'input.{loc[1]}' {DESCRIBED_INPUT[loc[1]]}"
    if key == "labels" and len(loc) == 3 and loc[2] == "display":
        return loc, "a label's 'display' must be a text"
    return None


def _cut(raw: dict, path: tuple) -> tuple:
    """Remove ``path`` from ``raw``; where it does not lead anywhere, the whole top-level part. Returns what went."""
    try:
        *parents, last = path
        node = raw
        for step in parents:
            node = node[step]
        del node[last]
        return path
    except (KeyError, IndexError, TypeError):
        raw.pop(path[0], None)
        return path[:1]


def _refusal(err: dict) -> MetadataError:
    if err["type"] == "own":
        return MetadataError(err["msg"])
    if err["type"] == "metadata":
        return MetadataError(f"metadata.json: {err['msg']}")
    # a check without its own sentence (none is expected): name the field, never the validator's wording
    where = ".".join(str(p) for p in err["loc"]) or "metadata"
    return MetadataError(f"metadata.json: '{where}' has a value this device cannot use")


def parse(raw: Any) -> Metadata:
    """The typed metadata, or MetadataError naming the first problem in the operator's words. A malformed part
    that only describes the model is left out (``Metadata.notes`` says which) instead of refusing the bundle."""
    notes: list[str] = []
    work = raw
    for _ in range(64):  # each pass cuts out at least one malformed part
        try:
            meta = Metadata.model_validate(work)
            meta._notes = notes
            return meta
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
        found = [(err, _descriptive(work, err["loc"]) if isinstance(work, dict) else None) for err in errors]
        strict = [err for err, cut in found if cut is None]
        if strict:
            raise _refusal(strict[0]) from None
        if work is raw:
            work = copy.deepcopy(raw)
        path, why = found[0][1]
        path = _cut(work, path)
        notes.append(f"metadata.json: {why}; " + ".".join(str(p) for p in path) + " was left out")
    raise MetadataError("metadata.json: too many malformed parts")


# ---- the card's own words, for bundles written before convert stored them as typed fields ----------------------

_CARD_TRAINED_ON = re.compile(r"Trained on:\s*(.+)")
_CARD_VALIDATED = re.compile(r"^#+[^\n]*validated[^\n]*\n+(.+?)(?:\n#|\Z)", re.S | re.M | re.I)


def card_sections(markdown: str | None) -> dict[str, str]:
    """From a Markdown model card, what an older bundle says it was trained on (its "Trained on:" line) and was
    validated on (its "...validated..." section), in the card's own words: never today's prose."""
    found = {}
    if markdown and (m := _CARD_TRAINED_ON.search(markdown)):
        found["trained_on"] = m.group(1).strip()
    if markdown and (m := _CARD_VALIDATED.search(markdown)):
        found["not_validated_on"] = " ".join(m.group(1).split())
    return found
