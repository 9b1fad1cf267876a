"""The model bundle: the contract between training and the device.

A bundle is one zip archive (``*.lkb``) holding ``model.tflite``,
``metadata.json``, ``ood.npz`` (feature statistics for the unfamiliar-cell
check), ``test_files.csv`` and ``MODEL_CARD.md``. One file, so installing a
new model is a single atomic rename.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import struct
import zipfile
import zlib
from zlib import error as zlib_error
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np

from device.analysis.preprocess import Preprocessing
from device.model.metadata import Metadata, MetadataError, parse

log = logging.getLogger("leukoscope.model")

REQUIRED_MEMBERS = ("model.tflite", "metadata.json")
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
REFERENCE_MEMBER = "reference.npz"


class BundleError(ValueError):
    """A bundle that must not be used; the message names the problem."""


@dataclass(frozen=True)
class Bundle:
    path: Path | None
    metadata: dict  # metadata.json as written: kept whole, so a copy of the bundle writes it back unchanged
    model_bytes: bytes
    ood: dict[str, np.ndarray] | None
    files: dict[str, bytes]
    reference: dict[str, np.ndarray] | None = None  # reference.npz: the bundle's own held-out cells (site calibration)

    @cached_property
    def meta(self) -> Metadata:
        """The metadata, typed (device.model.metadata): what the device reads."""
        try:
            return parse(self.metadata)
        except MetadataError as exc:
            raise BundleError(f"{self.path.name if self.path else 'bundle'}: {exc}") from None

    @property
    def labels(self) -> list[str]:
        return [entry.name for entry in self.meta.labels]

    @property
    def categories(self) -> list[str]:
        return [entry.category for entry in self.meta.labels]

    @property
    def preprocessing(self) -> Preprocessing:
        return self.meta.preprocessing

    @property
    def thresholds(self) -> dict:
        """The typed thresholds as the classifier takes them (``review``, ``malignant``, ..., ``ood``)."""
        return self.meta.thresholds.as_written()

    @property
    def name(self) -> str:
        return f"{self.meta.name} {self.meta.version}"

    @property
    def sha256(self) -> str:
        return self.meta.sha256.model_tflite


def default_bundle_path() -> Path:
    return Path(str(resources.files("device").joinpath("assets/models/default.lkb")))


def builtin_bundle_paths() -> dict[str, Path]:
    """The bundles that ship with the appliance, by file stem: ``default`` (the blast screen) and
    the others (e.g. ``differential``, the 8-class differential), any of which Settings can switch to."""
    d = default_bundle_path().parent
    return {p.stem: p for p in sorted(d.glob("*.lkb"))}


def pack(files: dict[str, bytes]) -> bytes:
    """Archive members in a fixed order, uncompressed (the TFLite file does not compress well)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            zf.writestr(info, files[name])
    return buf.getvalue()


# Every member is bounded by the size the zip directory declares, checked before anything is read,
# and then read by a bounded stream: the inflater is never asked for more than the declared size plus
# one byte, so a member that declares 1,000 bytes and really inflates to 2 GiB is refused after at most
# 1,001 bytes (zipfile's own read() asks the inflater for up to 2 GiB and only then truncates).
MEMBER_LIMITS = {"model.tflite": 48 * 1024 * 1024, "ood.npz": 16 * 1024 * 1024,
                 "test_files.csv": 8 * 1024 * 1024, "samples.npz": 8 * 1024 * 1024, REFERENCE_MEMBER: 8 * 1024 * 1024,
                 "metadata.json": 1024 * 1024, "MODEL_CARD.md": 1024 * 1024}
OTHER_MEMBER_LIMIT = 1024 * 1024
MAX_MEMBERS = 32
MAX_UNPACKED_BYTES = 80 * 1024 * 1024
# arrays inside ood.npz / samples.npz, read by the same bounded reader
NPZ_MEMBER_LIMITS = {"means.npy": 4 * 1024 * 1024, "precision.npy": 16 * 1024 * 1024,
                     "class_threshold.npy": 64 * 1024, "crops.npy": 32 * 1024 * 1024}
_CHUNK = 64 * 1024


def load_bundle(path: str | Path | None = None, data: bytes | None = None) -> Bundle:
    """Read and validate a bundle: sizes, structure, metadata schema, labels, checksum, arrays.
    The model itself is checked by a real interpreter in ``device.model.installed.validated``."""
    where = "bundle" if path is None else Path(path).name
    if data is None:
        path = Path(path) if path is not None else default_bundle_path()
        where = path.name
        try:
            size = path.stat().st_size
            if size > MAX_BUNDLE_BYTES:
                raise BundleError(f"{where}: {size:,} bytes is larger than a model bundle may be")
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{where}: model bundle not found at {path}") from None
        except OSError as exc:
            raise BundleError(f"{where}: cannot read the model bundle ({exc.strerror or exc})") from None
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"{where}: {len(data):,} bytes is larger than a model bundle may be")
    files = _read_members(data, where)
    missing = [m for m in REQUIRED_MEMBERS if m not in files]
    if missing:
        raise BundleError(f"{where}: the bundle lacks {', '.join(missing)}")
    try:
        meta = json.loads(files["metadata.json"])
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{where}: metadata.json is not valid JSON ({exc})") from None
    typed = _typed(meta, where)
    model = files["model.tflite"]
    digest = hashlib.sha256(model).hexdigest()
    if digest != typed.sha256.model_tflite:
        raise BundleError(f"{where}: model.tflite checksum mismatch (expected {typed.sha256.model_tflite[:12]}…, "
                          f"got {digest[:12]}…): the model file is corrupt or was altered")
    ood = _read_ood(files["ood.npz"], len(typed.labels), where) if "ood.npz" in files else None
    if typed.thresholds.ood is not None and ood is None:
        raise BundleError(f"{where}: thresholds name 'ood' but the bundle has no ood.npz")
    reference = (_read_reference(files[REFERENCE_MEMBER], len(typed.labels), ood, where)
                 if REFERENCE_MEMBER in files else None)
    bundle = Bundle(Path(path) if path is not None else None, meta, model, ood, files, reference)
    bundle.__dict__["meta"] = typed  # the cached typed view (cached_property's slot): parsed and noted once
    return bundle


def _typed(meta, where: str) -> Metadata:
    """The typed metadata, or BundleError naming the file; what was left out as malformed is logged."""
    try:
        typed = parse(meta)
    except MetadataError as exc:
        raise BundleError(f"{where}: {exc}") from None
    for note in typed.notes:
        log.warning("%s: %s", where, note)
    return typed


def _read_members(data: bytes, where: str, limits: dict[str, int] = MEMBER_LIMITS,
                  max_total: int = MAX_UNPACKED_BYTES) -> dict[str, bytes]:
    """Only members named in ``limits``, each read by a bounded stream and checked against its CRC."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile:
        raise BundleError(f"{where}: not a Leukoscope model bundle (not a valid archive; "
                          "the file may be truncated or corrupt)") from None
    except (zipfile.LargeZipFile, NotImplementedError, EOFError, OSError, ValueError, zlib_error) as exc:
        raise BundleError(f"{where}: the archive cannot be read ({exc})") from None
    if len(infos) > MAX_MEMBERS:
        raise BundleError(f"{where}: {len(infos)} archive members; a bundle has at most {MAX_MEMBERS}")
    total = 0
    for info in infos:
        limit = limits.get(info.filename, OTHER_MEMBER_LIMIT)
        if info.file_size > limit:
            raise BundleError(f"{where}: member {info.filename} unpacks to {info.file_size:,} bytes "
                              f"(at most {limit:,} allowed)")
        total += info.file_size
    if total > max_total:
        raise BundleError(f"{where}: members unpack to {total:,} bytes (at most {max_total:,})")
    unknown = sorted(i.filename for i in infos if i.filename not in limits)
    if unknown:
        raise BundleError(f"{where}: unknown archive member {unknown[0]!r}; a bundle holds only "
                          f"{', '.join(sorted(limits))}")
    out: dict[str, bytes] = {}
    for info in infos:
        if info.filename in out:
            raise BundleError(f"{where}: member {info.filename} appears twice")
        out[info.filename] = _read_member(data, info, where)
    return out


def _deflate_bound(n: int) -> int:
    """The most a deflate stream of ``n`` bytes can take (stored blocks: 5 bytes per 64 KiB, plus framing)."""
    return n + 5 * (n // 65535 + 1) + 16


def _read_member(data: bytes, info: zipfile.ZipInfo, where: str) -> bytes:
    name, declared, packed = info.filename, info.file_size, info.compress_size
    if info.flag_bits & 0x1:
        raise BundleError(f"{where}: member {name} is encrypted")
    if info.compress_type == zipfile.ZIP_STORED:
        if packed != declared:
            raise BundleError(f"{where}: member {name} is stored as {packed:,} bytes but declares {declared:,}")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if packed > _deflate_bound(declared):
            raise BundleError(f"{where}: member {name} is {packed:,} bytes compressed, more than its declared "
                              f"size of {declared:,}: the archive lies about its contents")
    else:
        raise BundleError(f"{where}: member {name} uses compression method {info.compress_type}; "
                          "a bundle is stored or deflated")
    off = info.header_offset
    header = data[off:off + zipfile.sizeFileHeader]
    if len(header) != zipfile.sizeFileHeader or header[:4] != zipfile.stringFileHeader:
        raise BundleError(f"{where}: member {name} is corrupt (no local header; truncated or corrupt archive)")
    fields = struct.unpack(zipfile.structFileHeader, header)
    n_name, n_extra = fields[zipfile._FH_FILENAME_LENGTH], fields[zipfile._FH_EXTRA_FIELD_LENGTH]
    start = off + zipfile.sizeFileHeader
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    if data[start:start + n_name] != info.orig_filename.encode(encoding, "replace"):
        raise BundleError(f"{where}: member {name} is corrupt (its local name differs from the directory's)")
    start += n_name + n_extra
    raw = memoryview(data)[start:start + packed]
    if len(raw) != packed:
        raise BundleError(f"{where}: member {name} is cut short (the file may be truncated or corrupt)")
    if info.compress_type == zipfile.ZIP_STORED:
        body = bytes(raw)
    else:
        body = _inflate_bounded(raw, declared, name, where)
    if zlib.crc32(body) != info.CRC:
        raise BundleError(f"{where}: an archive member is corrupt (checksum mismatch in {name})")
    return body


def _inflate_bounded(raw: memoryview, declared: int, name: str, where: str) -> bytes:
    """Inflate at most ``declared + 1`` bytes; a stream that goes on past its declared size is refused."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    got = 0
    try:
        for i in range(0, len(raw), _CHUNK):
            chunk = bytes(raw[i:i + _CHUNK])
            while chunk and not d.eof:
                piece = d.decompress(chunk, declared + 1 - got)  # never 0 (0 would mean "no limit")
                got += len(piece)
                if got > declared:
                    raise BundleError(f"{where}: member {name} inflates past its declared size of "
                                      f"{declared:,} bytes: the archive lies about its contents")
                parts.append(piece)
                chunk = d.unconsumed_tail
            if d.eof:
                break
    except zlib_error as exc:
        raise BundleError(f"{where}: an archive member is corrupt ({name}: {exc})") from None
    if not d.eof or got != declared:
        raise BundleError(f"{where}: member {name} ends after {got:,} of its declared {declared:,} bytes "
                          "(truncated or corrupt)")
    return b"".join(parts)


def read_npz(raw: bytes, where: str) -> dict[str, np.ndarray]:
    """An .npz member (itself a zip) through the same bounded reader; arrays only, no pickles."""
    members = _read_members(raw, where, NPZ_MEMBER_LIMITS, MEMBER_LIMITS["ood.npz"] * 2)
    out = {}
    for name, body in members.items():
        try:
            out[name[:-4]] = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - any decode failure means a damaged member
            raise BundleError(f"{where}: {name} is damaged ({exc})") from None
    return out


def _read_ood(raw: bytes, n_labels: int, where: str) -> dict[str, np.ndarray]:
    """Class means (labels x d) and a shared precision matrix (d x d), finite floats, no pickles."""
    try:
        ood = read_npz(raw, f"{where}: ood.npz")
    except BundleError as exc:
        raise BundleError(f"{exc} (ood.npz is damaged)") from None
    means, precision = ood.get("means"), ood.get("precision")
    if means is None or precision is None:
        raise BundleError(f"{where}: ood.npz must hold 'means' and 'precision'")
    if means.ndim != 2 or means.shape[0] != n_labels or means.dtype.kind != "f":
        raise BundleError(f"{where}: ood.npz 'means' has shape {means.shape} ({means.dtype}); "
                          f"expected ({n_labels}, d) floats, one row per label")
    d = means.shape[1]
    if precision.shape != (d, d) or precision.dtype.kind != "f":
        raise BundleError(f"{where}: ood.npz 'precision' has shape {precision.shape}; expected ({d}, {d}) floats")
    if not (np.isfinite(means).all() and np.isfinite(precision).all()):
        raise BundleError(f"{where}: ood.npz holds non-finite numbers")
    out = {"means": means.astype(np.float32), "precision": precision.astype(np.float32)}
    spread = ood.get("class_threshold")
    if spread is not None:  # per-class calibration: a cell is unusual for the class it is called
        if spread.shape != (n_labels,) or spread.dtype.kind != "f" or not (np.isfinite(spread).all() and
                                                                           (spread > 0).all()):
            raise BundleError(f"{where}: ood.npz 'class_threshold' must be {n_labels} positive finite numbers")
        out["class_threshold"] = spread.astype(np.float32)
    return out


def _read_reference(raw: bytes, n_labels: int, ood: dict | None, where: str) -> dict[str, np.ndarray]:
    """The reference cells: embeddings (n, d) float16, label indices (n,), the bundle's probabilities (n, labels)."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as inner:
            if sum(i.file_size for i in inner.infolist()) > MEMBER_LIMITS[REFERENCE_MEMBER] * 4:
                raise BundleError(f"{where}: {REFERENCE_MEMBER} unpacks to more than a bundle may hold")
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:
            ref = {k: z[k] for k in ("embeddings", "labels", "probabilities")}
    except BundleError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decode failure (or a missing array) means a damaged member
        raise BundleError(f"{where}: {REFERENCE_MEMBER} is damaged ({exc})") from None
    emb, y, p = ref["embeddings"], ref["labels"], ref["probabilities"]
    n = len(y)
    if emb.ndim != 2 or emb.shape[0] != n or emb.dtype.kind != "f" or p.shape != (n, n_labels) or y.ndim != 1 \
            or y.dtype.kind not in "iu" or not n:
        raise BundleError(f"{where}: {REFERENCE_MEMBER} must hold embeddings (n, d), labels (n,) and probabilities "
                          f"(n, {n_labels}); got {emb.shape}, {y.shape}, {p.shape}")
    if ood is not None and emb.shape[1] != ood["means"].shape[1]:
        raise BundleError(f"{where}: {REFERENCE_MEMBER} embedding width {emb.shape[1]} differs from ood.npz's "
                          f"({ood['means'].shape[1]})")
    if (y < 0).any() or (y >= n_labels).any() or not (np.isfinite(emb).all() and np.isfinite(p).all()):
        raise BundleError(f"{where}: {REFERENCE_MEMBER} holds labels out of range or non-finite numbers")
    return {"embeddings": emb.astype(np.float32), "labels": y.astype(np.int64), "probabilities": p.astype(np.float32)}


def summary(bundle: Bundle) -> dict:
    """What ``leukoscope model info`` shows."""
    meta = bundle.meta
    given = meta.model_fields_set

    def part(value):
        return value.as_written() if hasattr(value, "as_written") else value

    return {
        "path": str(bundle.path) if bundle.path else None,
        "name": meta.name, "version": meta.version, "task": meta.task,
        "created_at": meta.created_at, "quantization": meta.input.quantization,
        "labels": [label.as_written() for label in meta.labels], "input": meta.input.as_written(),
        "thresholds": meta.thresholds.as_written() if "thresholds" in given else None,
        "datasets": [d.as_written() for d in meta.datasets] if meta.datasets is not None else None,
        "metrics": {k: m.as_written() for k, m in meta.metrics.items()} if meta.metrics is not None else None,
        "parity": part(meta.parity), "sha256": meta.sha256.as_written(), "model_bytes": len(bundle.model_bytes),
        "versions": (meta.model_extra or {}).get("versions"), "model_card": part(meta.model_card),
    } | ({"notes": meta.notes} if meta.notes else {})
