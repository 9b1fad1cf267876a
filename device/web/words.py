"""Human words for pages and reports: translated display names, flag texts, cell counts, local times.

Every text a person reads goes through here or through a template's ``_()``, so one catalogue per language
(``translations/<lang>/LC_MESSAGES/messages.po``) translates the page and the PDF alike.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from flask import g, has_request_context, request
from flask_babel import format_datetime, get_locale, gettext, ngettext
from flask_babel import lazy_gettext as _l

from device.config import LANGUAGES
from device.model import vocabulary
from device.model.metadata import card_sections
from device.records.counts import DISCLAIMER, INSUFFICIENT, NOT_A_CELL, POSSIBLE_BLAST
from device.records.counts import category_of as sample_category_of

RTL = {"ar"}

# Strings that live in data files (labels.toml, the default flag rules, QC messages): listed here so the
# catalogue tool extracts them; looked up with gettext() at display time.
DATA_STRINGS = (
    _l("Neutrophil"), _l("Band neutrophil"), _l("Lymphocyte"), _l("Monocyte"), _l("Eosinophil"), _l("Basophil"),
    _l("Immature granulocyte"), _l("Promyelocyte"), _l("Myelocyte"), _l("Metamyelocyte"),
    _l("Atypical lymphocyte"), _l("Smudge cell"), _l("Myeloblast"), _l("Monoblast"), _l("Lymphoblast"),
    _l("Early pre-B ALL blast"), _l("Pre-B ALL blast"), _l("Pro-B ALL blast"), _l("Benign (hematogone / normal)"),
    _l("Normal lymphoid cell"), _l("Erythroblast (nucleated red cell)"), _l("Platelet"),
    _l("Blast-like cells present: a qualified reviewer must examine the smear"),
    _l("Suspicious for acute leukaemia: refer"),
    _l("Blasts at or above 3 in 100 counted white cells: refer to a haematology service"), _l("Atypical or immature cells present: review"),
    _l("Cells the model could not classify confidently: review them"),
    _l("More blast calls than this box's measured false calls explain: refer to a haematology service"),
    _l("Undecided cells could make this a referral: decide them before finishing"),
    _l("proposed"), _l("active"), _l("rejected"), _l("retired"),
    _l("Too dark: open the diaphragm or turn the lamp up, then capture again"),
    _l("Too bright: turn the lamp down or close the diaphragm, then capture again"),
    _l("Over- or under-exposed cells: adjust the lamp, then capture again"),
    _l("No smear in view: move to a stained area of the slide"),
    _l("Smear too thick here: move towards the thin end (feathered edge) of the smear"),
    _l("Out of focus: turn the fine focus, then capture again"),
    _l("Unusual scale: check that a 40x-100x objective is in use and the camera is not zoomed, "
       "or set the pixel size in Settings"), _l("Blast"),
    _l("red cells"), _l("last measured"), _l("configured"), _l("given"),
    _l("camera restarted"), _l("settings in use"), _l("server settings at the next restart"), _l("female"), _l("male"), _l("other"),
    _l("this sample is finished; its cells can no longer be changed"),
    _l("the model was not confident about this cell: choose its class instead of confirming"),
    _l("give a reason for re-opening the sample"), _l("this sample is not finished"),
    _l("this sample is already finished"), _l("this field is already counted"),
    _l("this field is counted: only a repeated view can be discarded"),
    _l("choose a probability between 50 and 100 %"),
    _l("Model %(name)s installed: it classifies every field captured from now on (within a few seconds, no restart). "
       "Fields already captured keep the model that classified them; a sample classified by two models shows the "
       "limits of both."),
    _l("ok"), _l("starting"), _l("disconnected"), _l("closed"), _l("error"),
    _l("Screening aid only, not a diagnosis. Every result must be confirmed by a qualified person reviewing the smear."),
)
CATEGORY_NAMES = {"normal": _l("normal"), "malignant": _l("blast / malignant"), "atypical": _l("atypical"),
                  "non-leukocyte": _l("not a white cell"), vocabulary.UNCERTAIN: _l("uncertain")}
LEVEL_NAMES = {"refer": _l("refer"), "review": _l("review"), INSUFFICIENT: _l("insufficient")}


def page_language(runtime) -> str:
    user = g.get("user") if has_request_context() else None
    if user is not None and user["language"] in LANGUAGES:
        return user["language"]
    if has_request_context():
        best = request.accept_languages.best_match(tuple(LANGUAGES))
        if best and best != "en":
            return best
    return runtime.config.web.language


def lang() -> str:
    return str(get_locale() or "en").split("_")[0]


# The category a label counts in: the one rule (device.records.counts.category_of), for the templates.
category_of = sample_category_of


def display(name: str | None) -> str:
    """The translated display name of a label ("Immature granulocyte", never "ig")."""
    if not name:
        return "–"
    if name == vocabulary.UNCERTAIN:
        return gettext("Uncertain (awaiting review)")
    if name == NOT_A_CELL:
        return gettext("Not a white cell / fragment")
    if name == POSSIBLE_BLAST:
        return gettext("Possible blast")
    try:
        return gettext(vocabulary.label(name).display)
    except KeyError:
        return name


def category_name(cat: str) -> str:
    return str(CATEGORY_NAMES.get(cat, cat))


def cells(n: int) -> str:
    return ngettext("%(num)d cell", "%(num)d cells", n)


def flag_text(f: dict) -> str:
    if f.get("level") == INSUFFICIENT:
        return gettext("Insufficient: %(n)d of %(target)d cells", n=f["count"], target=f["target"])
    message = f["message"]  # a configured rule's text: translated when the catalogue knows it
    return gettext(message)


def level_name(level: str) -> str:
    return str(LEVEL_NAMES.get(level, level))


# An uploaded picture cannot be refocused or relit: the advice is to take the picture again.
CAMERA_ONLY = ("Out of focus", "Too dark", "Too bright", "Over- or under-exposed cells")
UPLOAD_ADVICE = _l("photograph the field again and upload the new picture")
UPLOAD_WORDS = (_l("Out of focus"), _l("Too dark"), _l("Too bright"), _l("Over- or under-exposed cells"))


def qc_text(message: str, uploaded: bool = False) -> str:
    """A QC message ("a; b") with each part translated, first letter capitalised. For an uploaded picture,
    advice about the microscope (focus, lamp) becomes: photograph it again."""
    def part(p: str) -> str:
        head = p.split(":", 1)[0].strip()
        if uploaded and head in CAMERA_ONLY:
            return f"{gettext(head)}: {UPLOAD_ADVICE}"
        return gettext(p)

    parts = [part(p.strip()) for p in (message or "").split(";") if p.strip()]
    text = "; ".join(parts)
    return text[:1].upper() + text[1:]


def local_time(iso: str | None, with_zone: bool = False) -> str:
    """A stored UTC time as a date and time in the box's time zone (Settings), in the page's language."""
    if not iso:
        return "–"
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    text = format_datetime(dt, "yyyy-MM-dd HH:mm")
    if with_zone:
        from flask_babel import get_timezone

        text += " " + str(get_timezone() or "UTC")
    return text


def disclaimer() -> str:
    return gettext(DISCLAIMER)


_MARKS = str.maketrans("", "", "*`_")


def _plain(text: str) -> str:
    """A card's Markdown as plain text: the emphasis and code marks dropped."""
    return text.translate(_MARKS).strip()


def _own_words(bundle) -> dict[str, str]:
    """The parts the bundle words itself: its typed fields, else (a bundle written before they were typed) its
    card's text, else for what it was trained on its datasets' names."""
    meta = bundle.meta
    card = card_sections(meta.card_markdown or bundle.files.get("MODEL_CARD.md", b"").decode("utf-8", "replace"))
    found = {}
    for key in ("trained_on", "figures", "operating_point", "not_validated_on"):
        text = meta.part(key) or card.get(key)
        if text:
            found[key] = _plain(text)
    if "trained_on" not in found and meta.datasets:
        found["trained_on"] = ", ".join(d.name for d in meta.datasets)
    return found


def model_limits(bundle) -> list[tuple[str, str]]:
    """What the model was trained on, its measured figures, and what it was never validated on, from the bundle's
    typed metadata (device.model.metadata); a bundle written before these parts were typed is described by its
    own card's words (or not at all), never by this software's prose."""
    if bundle is None:
        return [(gettext("Model"), gettext("Its description is not available: the model that classified this "
                                           "sample is no longer on this appliance."), False)]
    meta = bundle.meta
    found = _own_words(bundle)
    m = meta.test_metrics
    if "figures" not in found and m is not None and m.balanced_accuracy is not None:
        found["figures"] = gettext("balanced accuracy %(ba).3f, macro F1 %(f1).3f on %(n)d held-out cells",
                                   ba=m.balanced_accuracy, f1=m.macro_f1 or 0.0, n=m.n or 0)
    if meta.cross_lab is not None and meta.cross_lab.text:
        found["cross_lab"] = _plain(meta.cross_lab.text)
    if "malignant" not in bundle.categories:
        found["blasts"] = gettext("This model has no blast class: the blast fraction counts only cells that a "
                                  "reviewer classified as blasts.")
    titles = {"trained_on": gettext("Trained on"), "figures": gettext("Measured"),
              "operating_point": gettext("Blast operating point"),
              "cross_lab": gettext("On a laboratory it never saw"),
              "not_validated_on": gettext("Never validated on"), "blasts": gettext("Blasts")}
    # (title, text, written by the bundle: in the card's own language, not translated here)
    ours = {"blasts"} | ({"figures"} if meta.part("figures") is None else set())
    order = ("trained_on", "figures", "operating_point", "cross_lab", "not_validated_on", "blasts")
    return [(titles[k], found[k], k not in ours) for k in order if k in found]


# The decoder's refusals (device.imageio), in the page's language: each English form and its catalogue entry.
IMAGE_ERRORS = (
    (r"the file is empty", "the file is empty"),
    (r"not an image file this appliance accepts \(JPEG, PNG, TIFF or BMP expected\)",
     "not an image file this appliance accepts (JPEG, PNG, TIFF or BMP expected)"),
    (r"the appliance is busy decoding other images; try again in a moment",
     "the appliance is busy decoding other images; try again in a moment"),
    (r"(?P<w>\d+)x(?P<h>\d+) pixels is larger than the (?P<limit>[\d,]+)-pixel limit for an image here",
     "%(w)sx%(h)s pixels is larger than the %(limit)s-pixel limit for an image here"),
    (r"(?P<w>\d+)x(?P<h>\d+) pixels is too small to hold a blood-smear image",
     "%(w)sx%(h)s pixels is too small to hold a blood-smear image"),
    (r"image dimensions are implausibly large", "image dimensions are implausibly large"),
    (r"not an image file \(JPEG, PNG, BMP or TIFF expected\)", "not an image file (JPEG, PNG, BMP or TIFF expected)"),
    (r"the image is damaged or truncated \((?P<why>.*)\)", "the image is damaged or truncated (%(why)s)"),
)
_CONFIG_CATALOGUE = (_l("unknown time zone %(name)s (use a name such as 'Africa/Nairobi' or 'UTC')"),)
_IMAGE_ERROR_CATALOGUE = (  # for the catalogue tool: the same texts as above
    _l("the file is empty"), _l("not an image file this appliance accepts (JPEG, PNG, TIFF or BMP expected)"),
    _l("the appliance is busy decoding other images; try again in a moment"),
    _l("%(w)sx%(h)s pixels is larger than the %(limit)s-pixel limit for an image here"),
    _l("%(w)sx%(h)s pixels is too small to hold a blood-smear image"), _l("image dimensions are implausibly large"),
    _l("not an image file (JPEG, PNG, BMP or TIFF expected)"), _l("the image is damaged or truncated (%(why)s)"),
)


def image_error(message: str) -> str:
    """An upload's refusal ("name: reason") with the reason translated; an unknown reason is shown as it is."""
    name, sep, reason = str(message).partition(": ")
    if not sep:
        name, reason = "", str(message)
    for pattern, text in IMAGE_ERRORS:
        m = re.fullmatch(pattern, reason, re.S)
        if m:
            translated = gettext(text, **m.groupdict()) if m.groupdict() else gettext(text)
            return f"{name}: {translated}" if name else translated
    return str(message)


def blast_probability(cell) -> float | None:
    """The model's blast probability of a stored cell: the sum over its malignant labels (None when the model that
    classified it has no blast class)."""
    import json

    try:
        probs = json.loads(cell["probabilities_json"] or "{}")
    except (ValueError, TypeError):
        return None
    mal = [v for k, v in probs.items() if sample_category_of(k) == "malignant"]
    return float(sum(mal)) if mal else None


def operating_point(bundle) -> float | None:
    t = bundle.thresholds.get("malignant") if bundle is not None else None
    return float(t) if t is not None else None


def blast_suspicion(cell, bundle) -> str:
    """A suspected blast in words: its blast probability against the point where the model calls a blast."""
    p = blast_probability(cell)
    if p is None:
        return gettext("Possible blast")
    point = operating_point(bundle)
    if point is None:
        return gettext("Possible blast: blast probability %(p)d %%", p=round(100 * p))
    return gettext("Possible blast: blast probability %(p)d %%; the model counts a blast from %(point)d %%",
                   p=round(100 * p), point=round(100 * point))


def has_blasts(bundle) -> bool:
    return bundle is not None and "malignant" in bundle.categories


def limits_lead(bundle) -> list[str]:
    """Two plain sentences before the figures: what the result can tell, and what it cannot."""
    if bundle is None:
        return [gettext("The model that classified this sample is no longer on this appliance: its limits cannot "
                        "be shown.")]
    if not has_blasts(bundle):
        return [gettext("This model does not screen for blasts: it sorts normal white cells only, and a blast would "
                        "be counted as one of them."),
                gettext("Use it for a differential count only; a smear suspected of leukaemia needs a qualified "
                        "person or a blast-screening model.")]
    lead = [gettext("This result says whether the model finds blast-like cells in this smear, as a reason to have it "
                    "examined by a qualified person."),
            gettext("It cannot rule out leukaemia: on smears unlike those it was trained on (listed below) it misses "
                    "blasts and calls normal cells blasts more often.")]
    plain = bundle.meta.cross_lab.plain if bundle.meta.cross_lab else None
    if plain is not None:
        # the bundle's measured figures on labs it never saw (bench.cross_lab), the worst of them, in plain words
        lead.append(gettext("On a lab it never saw, about %(review)d in 100 normal cells are sent to review and "
                            "%(blast)d in 1,000 are called blast (the worst of the labs it was tested on: %(labs)s).",
                            review=plain.review_per_100, blast=plain.blast_per_1000, labs=", ".join(plain.labs)))
    return lead


def sample_warnings(bundle, s) -> list[str]:
    """Where this sample falls in what the model was never validated on (from its card): a child's age, a
    marrow smear named in the clinic note."""
    if bundle is None:
        return []
    never = " ".join(t for title, t, _ in model_limits(bundle) if title == gettext("Never validated on")).lower()
    out = []
    age = (s["patient_age"] or "").strip()
    if age.isdigit() and int(age) < 18 and ("child" in never or "paediatric" in never or "pediatric" in never):
        out.append(gettext("This patient is %(age)s years old: the model was never validated on children's samples. "
                           "Read this result with extra care.", age=age))
    note = (s["note"] or "").lower()
    if ("marrow" in note or "moelle" in note) and "marrow" in never:
        out.append(gettext("The clinic note mentions bone marrow: the model was never validated on bone marrow from "
                           "other laboratories."))
    return out


def template_helpers(runtime) -> dict:
    from device.records.samples import cell_final, cell_undecided

    # a stored cell's final label and category, and whether it awaits a decision: the one rule, in the templates
    return {"disclaimer": disclaimer(), "final_of": lambda c: cell_final(c)[0], "category_of": category_of,
            "final_category_of": lambda c: cell_final(c)[1], "undecided_of": cell_undecided,
            "display": display, "cells_text": cells, "flag_text": flag_text, "level_name": level_name,
            "category_name": category_name, "qc_text": qc_text, "local_time": local_time, "lang": lang(),
            "blast_suspicion": lambda c: blast_suspicion(c, runtime.bundle), "POSSIBLE_BLAST": POSSIBLE_BLAST,
            "NOT_A_CELL": NOT_A_CELL,
            "rtl": lang() in RTL}


def config_error(exc) -> str:
    """A refused setting (device.config.ConfigError) in the page's language: the field as the Settings page
    labels it (else "[section] key"), then the schema's rule."""
    from device.web.settings_form import EDITABLE

    labels = {(s, k): label for s, k, label, _ in EDITABLE} | {("sample", "flags"): "Flag rules"}
    if not getattr(exc, "template", ""):
        # a message without a catalogue entry ("[web]: time_zone: unknown time zone 'X' (...)"): the setting named
        # as the page labels it, never as "[web]: time_zone"
        m = re.fullmatch(r"\[(\w+)\]:? (\w+): (.*)", str(exc), re.S)
        if not m or (m[1], m[2]) not in labels:
            return str(exc)  # a flag rule's message: shown as is
        rest = m[3]
        tz = re.fullmatch(r"unknown time zone ('.*?') \(use a name such as 'Africa/Nairobi' or 'UTC'\)", rest)
        if tz:
            rest = gettext("unknown time zone %(name)s (use a name such as 'Africa/Nairobi' or 'UTC')", name=tz[1])
        return f"{gettext(labels[(m[1], m[2])])}: {rest}"

    def name(key: str) -> str:
        label = labels.get((exc.section, key))
        return gettext(label) if label else f"[{exc.section}] {key}"

    params = dict(exc.params)
    if "other" in params:  # a min/max pair: name the other setting the same way
        params["other"] = name(params["other"])
    return f"{name(exc.key)}: {gettext(exc.template, **params)}"
