"""Property-based fuzzing of the entry points that take outside input.

Short here (CI); ``python -m bench.fuzz`` runs the same properties for 10,000+ cases
(LEUKOSCOPE_FUZZ_EXAMPLES examples per property).
"""
from __future__ import annotations

import io
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from device.analysis.cells import find_cells
from device.imageio import ImageError, decode_image
from device.analysis.preprocess import Preprocessing, crop_box, prepare_cell
from device.analysis.qc import check_field
from testkit import REPO
from testkit.web import csrf_of, signed_in

EXAMPLES = int(os.environ.get("LEUKOSCOPE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
FIELD = (REPO / "device/assets/fields/BloodImage_00000.jpg").read_bytes()

arrays = st.builds(
    lambda h, w, seed, kind: _array(h, w, seed, kind),
    st.integers(8, 160), st.integers(8, 160), st.integers(0, 2**32 - 1),
    st.sampled_from(["noise", "flat", "blobs"]))


def _array(h, w, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if kind == "flat":
        return np.full((h, w, 3), rng.integers(0, 256, 3), dtype=np.uint8)
    img = np.full((h, w, 3), (225, 200, 205), np.uint8)
    for _ in range(rng.integers(1, 6)):
        y, x, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, min(h, w) // 3))
        yy, xx = np.ogrid[:h, :w]
        img[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = (90, 40, 160)
    return img


@FUZZ
@given(st.binary(max_size=4096))
def test_decode_arbitrary_bytes(data):
    try:
        img = decode_image(data)
    except ImageError as exc:
        assert str(exc)
    else:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@FUZZ
@given(st.integers(0, len(FIELD)), st.integers(0, 255), st.integers(0, len(FIELD) - 1))
def test_decode_damaged_jpeg(cut, byte, pos):
    data = bytearray(FIELD[:cut] if cut else FIELD)
    if data:
        data[min(pos, len(data) - 1)] = byte
    try:
        img = decode_image(bytes(data))
        assert img.shape[2] == 3
    except ImageError:
        pass


@FUZZ
@given(st.integers(8, 64), st.integers(8, 64), st.sampled_from(["L", "LA", "RGB", "RGBA", "P", "I;16", "I", "F", "1", "CMYK"]),
       st.sampled_from(["PNG", "BMP", "TIFF", "JPEG"]))
def test_decode_every_mode_and_format(w, h, mode, fmt):
    img = Image.new(mode, (w, h))
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write that combination: nothing to decode
    out = decode_image(buf.getvalue())
    assert out.shape == (h, w, 3) and out.dtype == np.uint8


@FUZZ
@given(arrays)
def test_qc_always_answers(img):
    qc = check_field(img)
    assert all(np.isfinite(v) for v in (qc.edge_um, qc.background, qc.clipped, qc.cell_fraction))
    assert qc.ok == (not qc.problems)


@FUZZ
@given(arrays)
def test_cell_finder_boxes_stay_inside(img):
    h, w = img.shape[:2]
    for c in find_cells(img):
        x1, y1, x2, y2 = c.box
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h


@FUZZ
@given(arrays, st.integers(-50, 200), st.integers(-50, 200), st.integers(1, 120), st.integers(1, 120),
       st.floats(0.5, 4.0))
def test_crop_anywhere_gives_a_square_model_input(img, x, y, bw, bh, context):
    crop = crop_box(img, (x, y, x + bw, y + bh), context)
    assert crop.shape[0] == crop.shape[1] and crop.shape[2] == 3
    out = prepare_cell(crop, Preprocessing(input_size=32))
    assert out.shape == (32, 32, 3)


text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)


@FUZZ
@given(code=text, name=text, age=text, sex=text, note=text, q=text, label=text, reason=text)
def test_form_endpoints_never_fail(live_server, code, name, age, sex, note, q, label, reason):
    base, s, token = live_server
    r = s.post(base + "/samples", data={"csrf_token": token, "sample_code": code, "patient_name": name,
                                        "patient_age": age, "patient_sex": sex, "note": note})
    assert r.status_code < 500, r.status_code
    assert s.get(base + "/history", params={"q": q, "flag": label, "from": age}).status_code < 500
    assert s.post(base + "/cells/1/review", data={"csrf_token": token, "label": label}).status_code < 500
    assert s.post(base + "/login", data={"csrf_token": token, "username": name, "password": note}).status_code < 500
    assert s.post(base + "/users", data={"csrf_token": token, "username": code, "password": note,
                                         "confirm": note, "role": label}).status_code < 500
    assert s.post(base + "/settings", data={"csrf_token": token, "sample.target_cells": age,
                                            "web.clinic_name": name, "flags_toml": note}).status_code < 500
    assert s.post(base + "/samples/1/delete", data={"csrf_token": token, "reason": reason}).status_code < 500


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """One real server for the whole form fuzz (Hypothesis reruns the test body many times)."""
    from device.records import samples as records
    from testkit.web import serving

    with serving(tmp_path_factory.mktemp("fuzz")) as (base, app, rt):
        s = signed_in(base)
        sid = records.create_sample(rt.store, "FZ", "admin")
        rt.loop.capture(sid, "admin")
        yield base, s, csrf_of(s.get(base + "/").text)
