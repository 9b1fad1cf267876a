"""The rules the review, result and history pages used to hold in their views, now in the records and the label
vocabulary: pinned here, in-process, so a page change cannot quietly change them."""
from __future__ import annotations

import json

from device.model import vocabulary
from device.records import repeats, samples


def test_patient_fields():
    assert [samples.patient_age_ok(a) for a in ("", "0", "7", "120")] == [True] * 4
    assert not any(samples.patient_age_ok(a) for a in ("121", "1.5", "-1", "abc", "0120", " 7"))
    assert [samples.patient_sex(s) for s in ("", "female", "male", "other", "Male", "x")] == \
        ["", "female", "male", "other", "other", "other"]


def test_the_history_filters_are_the_five_the_page_offers():
    assert sorted(samples.SEARCH_FLAGS) == ["insufficient", "none", "open", "refer", "review"]


def test_review_labels_add_the_extras_in_group_order():
    model = ["neutrophil", "lymphocyte", "blast"]
    got = samples.review_labels(model, str)
    assert set(got) == set(model) | set(vocabulary.REVIEW_EXTRA)
    cats = [vocabulary.category_of(n) for n in got]
    assert cats == sorted(cats, key=samples.GROUP_ORDER.index)  # blasts first, then atypical, normal, the rest
    assert got[0] in ("blast", "lymphoblast", "myeloblast")
    assert vocabulary.review_choices(["smudge-cell"]).count("smudge-cell") == 1  # an extra the model has: once


def test_quick_labels_are_the_model_s_top_classes_then_a_blast():
    keyed = ["neutrophil", "lymphocyte", "monocyte", "blast"]
    cell = {"probabilities_json": json.dumps({"neutrophil": 0.6, "lymphocyte": 0.3, "monocyte": 0.05, "blast": 0.05})}
    assert samples.quick_labels(cell, keyed) == ["neutrophil", "lymphocyte", "monocyte", "blast"]
    cell = {"probabilities_json": json.dumps({"blast": 0.5, "neutrophil": 0.3, "lymphocyte": 0.2})}
    assert samples.quick_labels(cell, keyed) == ["blast", "neutrophil", "lymphocyte"]  # a blast already there
    assert samples.quick_labels({"probabilities_json": "not json"}, keyed) == ["blast"]


def _cell(i, label, flag=None, operator_label=None, category=None):
    return {"id": i, "label": label, "flag": flag, "operator_label": operator_label, "probability": 0.9,
            "category": category or vocabulary.category_of(label)}


def test_highlighted_cells_and_suspected_blasts():
    cells = [_cell(1, "neutrophil"), _cell(2, "blast"), _cell(3, "neutrophil", operator_label="lymphocyte"),
             _cell(4, "neutrophil", flag=samples.POSSIBLE_BLAST, operator_label="neutrophil"),
             _cell(5, "neutrophil", flag="uncertain"), _cell(6, "lymphocyte", flag=samples.POSSIBLE_BLAST)]
    assert [c["id"] for c in samples.highlighted(cells)] == [2, 4, 6, 3, 5]  # the report's order; 1 is plain
    assert samples.possible_blasts(cells) == {"n": 2, "decided": [("neutrophil", 1)], "undecided": 1}


def test_a_held_repeat_names_the_field_it_repeats():
    fields = [{"id": 10, "qc_json": "{}"}, {"id": 11, "qc_json": json.dumps({"held": True, "repeat_of": 10})},
              {"id": 12, "qc_json": json.dumps({"held": True, "repeat_of": 9})},
              {"id": 13, "qc_json": json.dumps({"held": False, "repeat_of": 10})}]
    assert repeats.held_repeat(fields, fields[1]) == {"field_id": 11, "same_as": 1}
    assert repeats.held_repeat(fields, fields[2]) == {"field_id": 12, "same_as": 0}  # its original was discarded
    assert repeats.held_repeat(fields, fields[3]) is None and repeats.held_repeat(fields, None) is None
    assert repeats.held_repeat(fields, fields[0]) is None
