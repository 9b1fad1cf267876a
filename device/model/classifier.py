"""Run a model bundle on cell crops with the LiteRT interpreter.

Interpreter preference: ai-edge-litert, then tflite-runtime, then TensorFlow's
``tf.lite`` if present (a development machine). The classifier checks the
model's tensors against the bundle metadata before it is used.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from device.model import vocabulary
from device.model.bundle import Bundle, BundleError
from device.analysis.preprocess import normalize


RUNTIMES = ("ai-edge-litert", "tflite-runtime", "tensorflow")


def _interpreter_class(only: str | None = None):
    """The first interpreter that imports, in order of preference (or only the one named)."""
    for name in RUNTIMES if only is None else (only,):
        try:
            if name == "ai-edge-litert":
                from ai_edge_litert.interpreter import Interpreter
            elif name == "tflite-runtime":
                from tflite_runtime.interpreter import Interpreter
            else:
                import tensorflow as tf

                Interpreter = tf.lite.Interpreter
            return Interpreter, name
        except ImportError:
            continue
    raise RuntimeError(f"no TFLite interpreter installed ({only or 'pip install ai-edge-litert'})")


def ood_scores(emb: np.ndarray, ood: dict[str, np.ndarray], top: np.ndarray | None = None) -> np.ndarray:
    """How unusual each cell is. With per-class calibration (``class_threshold`` in ood.npz): the squared
    Mahalanobis distance (shared covariance) to the mean of the class the cell is called (``top``), over that
    class's own validation 99.5th percentile; above 1 it is unusual for its class. Older bundles: the distance
    to the nearest class mean (unlike any cell type the model was trained on)."""
    if "class_threshold" in ood and top is not None:
        diff = emb - ood["means"][top]
        return np.einsum("nd,de,ne->n", diff, ood["precision"], diff) / ood["class_threshold"][top]
    diff = emb[:, None, :] - ood["means"][None, :, :]
    return np.einsum("nkd,de,nke->nk", diff, ood["precision"], diff).min(1)


@dataclass(frozen=True)
class CellPrediction:
    label: str  # the model's top label (kept even when the cell is uncertain)
    category: str
    probability: float
    probabilities: dict[str, float]
    flag: str | None  # None, "low-confidence", "unfamiliar" or "possible-blast"
    ood_score: float | None
    embedding: np.ndarray | None = None  # the layer the unfamiliar check reads; stored for site calibration
    model_probabilities: np.ndarray | None = None  # the bundle's own, before a site calibration (stored too)

    @property
    def uncertain(self) -> bool:
        return self.flag is not None

    @property
    def shown_label(self) -> str:
        return vocabulary.UNCERTAIN if self.uncertain else self.label


_NOTICE = b"Created TensorFlow Lite XNNPACK delegate for CPU."
_stderr_lock = threading.Lock()


@contextmanager
def _without_xnnpack_notice():
    """LiteRT's C++ prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on the first model load,
    with no Python switch: hold file descriptor 2 in a temporary file meanwhile and pass on everything else."""
    import tempfile

    with _stderr_lock:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):
            saved = None
        if saved is None:
            yield
            return
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                held.seek(0)
                rest = b"".join(line for line in held.read().splitlines(keepends=True) if _NOTICE not in line)
                if rest:
                    os.write(2, rest)


class Classifier:
    def __init__(self, bundle: Bundle, threads: int = 1, runtime: str | None = None):
        self.bundle = bundle
        self.pp = bundle.preprocessing
        Interpreter, self.runtime = _interpreter_class(runtime)
        try:
            with _without_xnnpack_notice():
                self._interp = Interpreter(model_content=bundle.model_bytes, num_threads=max(1, int(threads)))
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{bundle.meta.name}: the model cannot be loaded ({exc})") from None
        self._lock = threading.Lock()  # an interpreter is not safe to share between threads
        self._check_tensors()
        self._batch = 1
        # a site calibration (device.calibration.Calibration) fitted for this bundle, or None
        self.calibration = None

    def _check_tensors(self) -> None:
        meta = self.bundle.meta
        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            raise BundleError(f"model has {len(inputs)} inputs; one image input expected")
        inp = inputs[0]
        s = self.pp.input_size
        if list(inp["shape"][1:]) != [s, s, 3]:
            raise BundleError(f"model input shape {list(inp['shape'])} does not match the bundle's "
                              f"{s}x{s}x3 pre-processing")
        want = meta.input.dtype
        if np.dtype(inp["dtype"]).name != want:
            raise BundleError(f"model input type {np.dtype(inp['dtype']).name} does not match the bundle's {want}")
        self._in = inp
        outputs = {o["name"]: o for o in self._interp.get_output_details()}
        k = len(self.bundle.labels)
        spec = {role: out.name for role, out in meta.outputs.items()}
        self._prob = self._embed = None
        for o in outputs.values():
            width = int(o["shape"][-1])
            if spec.get("probabilities") == o["name"] or (not spec and width == k):
                self._prob = o
            elif spec.get("embedding") == o["name"]:
                self._embed = o
        if self._prob is None:
            shapes = [list(o["shape"]) for o in outputs.values()]
            raise BundleError(f"no model output has the bundle's {k} labels (output shapes {shapes})")
        if int(self._prob["shape"][-1]) != k:
            raise BundleError(f"model output has {int(self._prob['shape'][-1])} classes but the bundle names {k} labels")

    def _resize(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
            self._interp.allocate_tensors()
            self._batch = n
            self._in = self._interp.get_input_details()[0]
            outs = {o["name"]: o for o in self._interp.get_output_details()}
            self._prob = outs[self._prob["name"]]
            if self._embed is not None:
                self._embed = outs[self._embed["name"]]

    @staticmethod
    def _dequantize(arr: np.ndarray, detail: dict) -> np.ndarray:
        scale, zp = detail["quantization"]
        if np.issubdtype(arr.dtype, np.integer) and scale:
            return (arr.astype(np.float32) - zp) * scale
        return arr.astype(np.float32)

    def _quantize(self, x: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self._in["dtype"])
        if dtype.kind == "f":
            return x.astype(dtype)
        scale, zp = self._in["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)

    def raw(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 crops (N, S, S, 3) already prepared -> (probabilities, embeddings)."""
        if len(crops) == 0:
            return np.zeros((0, len(self.bundle.labels)), np.float32), None
        x = self._quantize(normalize(crops, self.pp))
        with self._lock:
            self._resize(len(x))
            self._interp.set_tensor(self._in["index"], x)
            self._interp.invoke()
            probs = self._dequantize(self._interp.get_tensor(self._prob["index"]), self._prob)
            emb = None
            if self._embed is not None:
                emb = self._dequantize(self._interp.get_tensor(self._embed["index"]), self._embed)
        probs = np.clip(probs, 0.0, None)
        probs /= np.maximum(probs.sum(1, keepdims=True), 1e-12)
        return probs, emb

    def classify(self, crops: np.ndarray) -> list[CellPrediction]:
        probs, emb = self.raw(crops)
        ood, th = self.bundle.ood, self.bundle.thresholds
        cal, raw = self.calibration, probs
        if cal is not None and emb is not None:  # the site's head, thresholds and unfamiliar statistics
            probs, ood, th = cal.adjust(probs, emb)
        scores = None if emb is None or ood is None else ood_scores(emb, ood, probs.argmax(1))
        names, cats = self.bundle.labels, self.bundle.categories
        mal = [i for i, c in enumerate(cats) if c == "malignant"]
        out = []
        for i, p in enumerate(probs):
            score = None if scores is None else float(scores[i])
            top, flag = decide(p, mal, score, th)
            out.append(CellPrediction(names[top], cats[top], float(p[top]),
                                      {n: float(v) for n, v in zip(names, p)}, flag, score,
                                      None if emb is None else emb[i], raw[i]))
        return out


def decide(p: np.ndarray, malignant: list[int], ood_score: float | None, thresholds: dict) -> tuple[int, str | None]:
    """One cell's label index and flag from its probabilities: the screen's operating-point rule.

    - Blast probability (the sum over malignant labels) at or above the bundle's operating point
      (``thresholds["malignant"]``, chosen on validation for a target sensitivity): the cell counts as
      a blast, even when a normal class has the top probability, and even if it looks unfamiliar
      (a screen must not lose a blast to a doubt).
    - Far from every trained class: "unfamiliar", left for review.
    - Blast probability between ``thresholds["malignant_review"]`` and the operating point: "possible-blast",
      left for review (a reviewer decides; it is never counted as normal on the model's word).
    - Top probability below ``thresholds["review"]``: "low-confidence", left for review.
    """
    if not np.isfinite(p).all():  # a broken output is never a confident call
        return int(np.nan_to_num(p, nan=-1.0).argmax()), "low-confidence"
    top = int(p.argmax())
    t_mal, t_mal_review = thresholds.get("malignant"), thresholds.get("malignant_review")
    blast = float(p[malignant].sum()) if malignant else 0.0
    if malignant and t_mal is not None and blast >= float(t_mal):
        return malignant[int(np.argmax(p[malignant]))], None
    if ood_score is not None and thresholds.get("ood") is not None and not ood_score <= float(thresholds["ood"]):
        return top, "unfamiliar"  # (a non-finite distance is unfamiliar too)
    if malignant and t_mal_review is not None and blast >= float(t_mal_review):
        return top, "possible-blast"
    if malignant and t_mal is not None and top in malignant:
        # a blast on top but below the operating point: the figures count only the point's blasts
        return top, "possible-blast"
    if float(p[top]) < float(thresholds.get("review", 0.0)):
        return top, "low-confidence"
    return top, None
