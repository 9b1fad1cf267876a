"""Per-cell latency on the same crops: int8 LiteRT (1 and 2 threads), float32 TFLite,
the Keras model in TensorFlow, and tflite-runtime when installed.

    python -m bench.latency --run RUN_DIR      # the run behind a bundle (default: newest runs/**/model.keras)
    python -m bench.latency --quick            # trains a tiny model first (CI)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import result

REPO = Path(__file__).resolve().parent.parent


def _times(fn, crops, repeats: int) -> list[float]:
    for c in crops[:5]:
        fn(c)  # warm-up
    out = []
    for i in range(repeats):
        c = crops[i % len(crops)]
        t0 = time.perf_counter()
        fn(c)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _stats(ms: list[float]) -> dict:
    return {"median_ms": round(float(np.median(ms)), 3), "p90_ms": round(float(np.percentile(ms, 90)), 3)}


def newest_run() -> Path:
    runs = sorted(REPO.glob("runs/**/model.keras"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise SystemExit("no trained run found: pass --run RUN_DIR or use --quick")
    return runs[-1].parent


def quick_run(tmp: Path) -> Path:
    from training.config import recipe_from_dict
    from training.recorded import data_root
    from training.train import train

    recipe = recipe_from_dict({
        "task": "differential", "name": "latency-quick", "seed": 1,
        "data": {"sources": [{"kind": "pbc", "path": str(data_root("pbc-normal-wbc"))}],
                 "max_per_class": 10},
        "preprocessing": {"input_size": 96, "crop_fraction": 0.7},
        "train": {"epochs": 1, "warmup_epochs": 0},
    })
    return train(recipe, out_root=tmp, log=lambda *_: None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--bundle", type=Path, help="int8 bundle (default: convert the run now)")
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    import keras

    from convert.build import convert_run
    from device.model.bundle import Bundle, load_bundle
    from device.model.classifier import Classifier
    from device.analysis.preprocess import normalize
    from training.data import load_records
    from training.evaluate import records_from_manifest

    tmp = Path(tempfile.mkdtemp(prefix="leukoscope-latency-"))
    run = quick_run(tmp) if args.quick else (args.run or newest_run())
    repeats = 60 if args.quick else args.repeats
    bundle_path = args.bundle or convert_run(run, out=tmp / "int8.lkb", representative_count=100 if args.quick else 300,
                                             parity_floor=0.0, log=lambda *_: None)
    bundle = load_bundle(bundle_path)
    pp = bundle.preprocessing
    test = [r for s, r in records_from_manifest(run) if s == "test"][:100]
    crops, _ = load_records(test, pp, bundle.labels)
    crops = [c[None] for c in crops]

    figures = {}
    for threads in (1, 2):
        clf = Classifier(bundle, threads=threads)
        figures[f"int8_litert_{threads}t"] = _stats(_times(clf.raw, crops, repeats))
    model = keras.models.load_model(run / "model.keras")
    # float32 TFLite: the plain converter output, run by the same LiteRT interpreter
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    f32_bytes = conv.convert()
    meta = dict(bundle.metadata)
    meta = {**meta, "input": {**meta["input"], "dtype": "float32"}, "outputs": {}}
    f32_clf = Classifier(Bundle(None, meta, f32_bytes, None, {}), threads=1)
    figures["float32_tflite_1t"] = _stats(_times(f32_clf.raw, crops, repeats))
    keras_fn = lambda c: model(normalize(c, pp), training=False).numpy()  # noqa: E731
    figures["keras_tf"] = _stats(_times(keras_fn, crops, repeats))
    try:
        figures["int8_tflite_runtime_1t"] = _stats(_times(Classifier(bundle, 1, runtime="tflite-runtime").raw,
                                                          crops, repeats))
    except RuntimeError:
        figures["int8_tflite_runtime_1t"] = None  # not installed
    sizes = {"int8_tflite_bytes": len(bundle.model_bytes), "float32_tflite_bytes": len(f32_bytes),
             "keras_file_bytes": (run / "model.keras").stat().st_size, "bundle_bytes": Path(bundle_path).stat().st_size}
    ratio = figures["int8_litert_1t"]["median_ms"] / figures["keras_tf"]["median_ms"]
    for name, f in figures.items():
        if isinstance(f, dict):
            print(f"{name:>24}: median {f['median_ms']:.3f} ms, p90 {f['p90_ms']:.3f} ms per cell")
    print(f"sizes: {json.dumps(sizes)}")
    result({"bench": "latency", "quick": args.quick, "run": str(run), "crops": len(crops), "repeats": repeats,
            **figures, **sizes, "int8_litert_over_keras": round(ratio, 4), "target_ratio": 0.3,
            "runtime": Classifier(bundle).runtime})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
