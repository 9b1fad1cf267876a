"""The same view captured twice: a key held down, a double click, the same file uploaded again, an unmoved slide.

Its cells are the same cells; counted again they would inflate the count and the blast fraction. A field is a
repeat of an earlier field of its sample when BOTH its picture (a 256-bit difference hash of the whole view) is
nearly the same AND most of its cell boxes land on that field's cell boxes. Measured on the 12 bundled BCCD fields
with cells (``tests/test_review.py``): different fields differ in 104-150 of the 256 bits, the same field with
camera noise (sigma 6 grey levels) in 8, shifted by 8 px (a nudged slide: a new view) in 41.
"""
from __future__ import annotations

import json

import numpy as np

HASH_BITS_MAX = 32  # of 256: at most this many bits differ between two pictures of the same view
BOX_IOU = 0.5  # a cell box matches when it overlaps an earlier one this much (intersection over union)
BOX_SHARE = 0.6  # and at least this share of the new field's boxes match
# the fields of a sample held out of the counts (``?`` is the sample id)
HELD_FIELDS = "SELECT id FROM fields WHERE sample_id = ? AND json_extract(qc_json, '$.held') = 1"


def view_hash(image: np.ndarray) -> str:
    """A difference hash: 16 x 16 bits, whether each cell of a 17 x 16 grey thumbnail is brighter than its left
    neighbour. Robust to noise and JPEG, not to a moved slide."""
    import cv2

    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    small = cv2.resize(grey, (17, 16), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return np.packbits(bits).tobytes().hex()


def hash_distance(a: str, b: str) -> int:
    x = np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)
    return int(np.unpackbits(x).sum())


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def boxes_match(new: list, old: list) -> bool:
    """Most of the new boxes land on old ones (both in the same frame's pixels)."""
    if not new or not old:
        return False
    hits = sum(1 for b in new if max(_iou(b, o) for o in old) >= BOX_IOU)
    return hits >= BOX_SHARE * len(new)


def repeat_of(conn, sample_id: int, vhash: str, boxes: list, width: int, height: int) -> int | None:
    """The id of an earlier field of the sample showing the same view, or None."""
    for f in conn.execute("SELECT id, width, height, qc_json FROM fields WHERE sample_id = ? AND qc_ok = 1 "
                          "ORDER BY id", (sample_id,)):
        old_hash = json.loads(f["qc_json"] or "{}").get("view_hash")
        if not old_hash or hash_distance(vhash, old_hash) > HASH_BITS_MAX:
            continue
        fx, fy = width / max(1, f["width"]), height / max(1, f["height"])  # an upload may be another size
        old = [(r[0] * fx, r[1] * fy, r[2] * fx, r[3] * fy)
               for r in conn.execute("SELECT x1, y1, x2, y2 FROM cells WHERE field_id = ?", (f["id"],))]
        if boxes_match(boxes, old):
            return f["id"]
    return None


def held_repeat(fields, field) -> dict | None:
    """A field held as a repeated view: its id and the number (1, 2, ...) of the field it repeats in the sample
    (0 when that field is gone); None for a counted field or none."""
    qc = json.loads(field["qc_json"] or "{}") if field is not None else {}
    if not qc.get("held"):
        return None
    ids = [f["id"] for f in fields]
    same = qc.get("repeat_of")
    return {"field_id": field["id"], "same_as": ids.index(same) + 1 if same in ids else 0}
