"""Run a model bundle on cell crops with the LiteRT interpreter.

Interpreter preference: ai-edge-litert, then tflite-runtime, then TensorFlow's
``tf.lite`` if present (a development machine). The classifier checks the
model's tensors against the bundle metadata before it is used.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from device.model import labels as vocab
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


def ood_scores(emb: np.ndarray, ood: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance of each embedding to the nearest class mean
    (shared covariance): large means unlike any cell type the model was trained on."""
    diff = emb[:, None, :] - ood["means"][None, :, :]
    return np.einsum("nkd,de,nke->nk", diff, ood["precision"], diff).min(1)


@dataclass(frozen=True)
class CellPrediction:
    label: str  # the model's top label (kept even when the cell is uncertain)
    category: str
    probability: float
    probabilities: dict[str, float]
    flag: str | None  # None, "low-confidence" or "unfamiliar"
    ood_score: float | None

    @property
    def uncertain(self) -> bool:
        return self.flag is not None

    @property
    def shown_label(self) -> str:
        return vocab.UNCERTAIN if self.uncertain else self.label


class Classifier:
    def __init__(self, bundle: Bundle, threads: int = 1, runtime: str | None = None):
        self.bundle = bundle
        self.pp = bundle.preprocessing
        Interpreter, self.runtime = _interpreter_class(runtime)
        try:
            self._interp = Interpreter(model_content=bundle.model_bytes, num_threads=max(1, int(threads)))
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{bundle.metadata.get('name', 'bundle')}: the model cannot be loaded ({exc})") from None
        self._lock = threading.Lock()  # an interpreter is not safe to share between threads
        self._check_tensors()
        self._batch = 1

    def _check_tensors(self) -> None:
        meta = self.bundle.metadata
        inputs = self._interp.get_input_details()
        if len(inputs) != 1:
            raise BundleError(f"model has {len(inputs)} inputs; one image input expected")
        inp = inputs[0]
        s = self.pp.input_size
        if list(inp["shape"][1:]) != [s, s, 3]:
            raise BundleError(f"model input shape {list(inp['shape'])} does not match the bundle's "
                              f"{s}x{s}x3 pre-processing")
        want = meta["input"]["dtype"]
        if np.dtype(inp["dtype"]).name != want:
            raise BundleError(f"model input type {np.dtype(inp['dtype']).name} does not match the bundle's {want}")
        self._in = inp
        outputs = {o["name"]: o for o in self._interp.get_output_details()}
        k = len(self.bundle.labels)
        spec = meta.get("outputs", {})
        self._prob = self._embed = None
        for o in outputs.values():
            width = int(o["shape"][-1])
            if spec.get("probabilities", {}).get("name") == o["name"] or (not spec and width == k):
                self._prob = o
            elif spec.get("embedding", {}).get("name") == o["name"]:
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
        scores = None if emb is None or self.bundle.ood is None else ood_scores(emb, self.bundle.ood)
        t_review = float(self.bundle.thresholds.get("review", 0.0))
        t_ood = self.bundle.thresholds.get("ood")
        names, cats = self.bundle.labels, self.bundle.categories
        out = []
        for i, p in enumerate(probs):
            top = int(p.argmax())
            flag = None
            score = None if scores is None else float(scores[i])
            if score is not None and t_ood is not None and score > float(t_ood):
                flag = "unfamiliar"
            elif float(p[top]) < t_review:
                flag = "low-confidence"
            out.append(CellPrediction(names[top], cats[top], float(p[top]),
                                      {n: float(v) for n, v in zip(names, p)}, flag, score))
        return out
