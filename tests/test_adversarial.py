"""Issue 24: what an adversarial run still broke, and what a newcomer tripped on. One test per item;
each failed on the code before its fix."""
from __future__ import annotations

import io
import struct
import time
import zipfile
import zlib

import pytest

from testkit import REPO
from testkit.web import csrf_of, signed_in


# -- 1: a bundle that lies about its sizes -------------------------------------------------------

def _members() -> dict[str, bytes]:
    """The members of a shipped bundle (any bundle in the format will do: only the format is tested)."""
    with zipfile.ZipFile(REPO / "device/assets/models/default.lkb") as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _raw_zip(entries: list[tuple[str, int, int, int, bytes]]) -> bytes:
    """A zip written by hand so its directory can lie: (name, method, crc, declared size, payload)."""
    body, central = io.BytesIO(), io.BytesIO()
    for name, method, crc, declared, payload in entries:
        offset = body.tell()
        n = name.encode()
        body.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21,
                               crc, len(payload), declared, len(n), 0) + n + payload)
        central.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21,
                                  crc, len(payload), declared, len(n), 0, 0, 0, 0, 0, offset) + n)
    cd = central.getvalue()
    start = body.tell()
    return body.getvalue() + cd + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries),
                                              len(cd), start, 0)


def _deflate_zeros(n: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = bytes(1 << 20)
    return b"".join(c.compress(block) for _ in range(n >> 20)) + c.flush()


def _lying_bundle(inflates_to: int = 256 << 20, declares: int = 1_000_000) -> bytes:
    """A shipped bundle whose MODEL_CARD.md declares ``declares`` bytes (CRC of those bytes) but really
    inflates to ``inflates_to``: what the adversarial run installed (there 2 GiB in a 3.7 MB file). The
    compressed size stays below the declared one, so only a bounded read can tell."""
    entries = [(name, zipfile.ZIP_STORED, zlib.crc32(data), len(data), data)
               for name, data in _members().items() if name != "MODEL_CARD.md"]
    entries.append(("MODEL_CARD.md", zipfile.ZIP_DEFLATED, zlib.crc32(bytes(declares)), declares,
                    _deflate_zeros(inflates_to)))
    return _raw_zip(entries)


def _stored(files: dict[str, bytes]) -> list[tuple[str, int, int, int, bytes]]:
    return [(n, zipfile.ZIP_STORED, zlib.crc32(d), len(d), d) for n, d in files.items()]


def test_item1_the_hand_built_zip_is_a_real_bundle():
    """The helper writes zips the reader accepts when they do not lie (so the refusals below are real)."""
    from device.model.bundle import load_bundle

    honest = _raw_zip(_stored(_members()))
    assert load_bundle(data=honest).labels == load_bundle().labels


def test_item1_a_member_inflating_past_its_declared_size_is_refused_fast_and_small():
    import tracemalloc

    from device.model.bundle import BundleError, load_bundle

    data = _lying_bundle()
    assert len(data) < 2 << 20  # a small file...
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(BundleError, match="inflates past its declared size of 1,000,000 bytes"):
            load_bundle(data=data)  # ...that the old reader inflated to 256 MiB and accepted
        elapsed = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5, elapsed
    assert peak < 3 * len(data) + (8 << 20), peak  # about the file itself, nothing inflated


def test_item1_sizes_that_cannot_be_true_and_unknown_members_are_refused():
    from device.model.bundle import BundleError, load_bundle

    files = _members()
    card = files["MODEL_CARD.md"]
    # compressed far larger than declared (a 3.7 MB member that claims 1,000 bytes)
    big = [e for e in _stored(files) if e[0] != "MODEL_CARD.md"] + [
        ("MODEL_CARD.md", zipfile.ZIP_DEFLATED, zlib.crc32(bytes(1000)), 1000, _deflate_zeros(256 << 20))]
    with pytest.raises(BundleError, match="more than its declared size"):
        load_bundle(data=_raw_zip(big))
    # a stored member whose stored length is not its declared size
    lie = [e for e in _stored(files) if e[0] != "MODEL_CARD.md"] + [
        ("MODEL_CARD.md", zipfile.ZIP_STORED, zlib.crc32(card), 10, card)]
    with pytest.raises(BundleError, match="stored as"):
        load_bundle(data=_raw_zip(lie))
    # a member of a name no bundle has, however small
    extra = _stored(dict(files, **{"extra.bin": b"x" * 100}))
    with pytest.raises(BundleError, match="unknown archive member 'extra.bin'"):
        load_bundle(data=_raw_zip(extra))
    # a deflate stream that stops short of its declared size
    short = [e for e in _stored(files) if e[0] != "MODEL_CARD.md"] + [
        ("MODEL_CARD.md", zipfile.ZIP_DEFLATED, zlib.crc32(card + b"more"), len(card) + 4,
         zlib.compress(card)[2:-4])]
    with pytest.raises(BundleError, match="ends after"):
        load_bundle(data=_raw_zip(short))


def test_item1_the_same_lie_inside_ood_npz_is_refused():
    """ood.npz is itself a zip: the bounded reader reads it too (np.load would inflate it)."""
    from device.model.bundle import BundleError, load_bundle, pack

    files = _members()
    with zipfile.ZipFile(io.BytesIO(files["ood.npz"])) as inner:
        arrays = {i.filename: inner.read(i) for i in inner.infolist()}
    name = max(arrays, key=lambda k: len(arrays[k]))  # the precision matrix: its compressed lie fits
    entries = _stored({k: v for k, v in arrays.items() if k != name})
    entries.append((name, zipfile.ZIP_DEFLATED, zlib.crc32(bytes(len(arrays[name]))), len(arrays[name]),
                    _deflate_zeros(64 << 20)))
    files["ood.npz"] = _raw_zip(entries)
    t0 = time.monotonic()
    with pytest.raises(BundleError, match="inflates past its declared size"):
        load_bundle(data=pack(files))
    assert time.monotonic() - t0 < 0.5


def _vm(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def test_item1_settings_model_install_refuses_it_over_http_at_baseline_memory(live_app):
    base, app, rt, _ = live_app
    s = signed_in(base)
    token = csrf_of(s.get(base + "/settings").text)
    data = _lying_bundle()
    before = rt.bundle.sha256
    with open("/proc/self/clear_refs", "w") as fh:  # restart the peak-RSS counter (VmHWM)
        fh.write("5")
    rss0 = _vm("VmRSS")
    t0 = time.monotonic()
    r = s.post(base + "/settings/model", data={"csrf_token": token},
               files={"bundle": ("card.lkb", data, "application/octet-stream")})
    elapsed = time.monotonic() - t0
    grown = _vm("VmHWM") - rss0
    assert r.status_code == 400 and "Model refused" in r.text and "inflates past" in r.text
    assert elapsed < 2.0, elapsed
    assert grown < 64 << 20, grown / 2**20  # the old reader grew by the full 256 MiB
    assert not (rt.config.data_dir / "models" / "current.lkb").exists()
    assert rt.bundle.sha256 == before
