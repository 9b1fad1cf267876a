"""A field with about ten white cells through the device's analysis (scale, QC, finder, crops, classifier in
one batch), the way a capture runs it, without the database: the issue-20 budget (<= 100 ms per field with
10 cells on this machine) for the bundled model.

Real BCCD fields, nine shrunk and tiled into one 640 x 480 frame (``testkit.bccd.magnified(..., 1/3)``: a
lower-power objective), so each frame holds about ten annotated white cells; the device measures its scale and
cuts every cell at the bundle's physical framing.

    python -m bench.field_cells [--frames 20] [--threads 1] [--bundle PATH]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from bench import result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="interpreter threads ([model] threads on the box)")
    ap.add_argument("--bundle", help="a bundle (default: the bundled default)")
    args = ap.parse_args(argv)

    from device.model.analyzer import Analyzer
    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier
    from testkit.bccd import magnified, views_for

    bundle = load_bundle(args.bundle)
    analyzer = Analyzer(Classifier(bundle, threads=args.threads))
    frames = magnified(views_for(limit=9 * args.frames), 1 / 3)[: args.frames]
    analyzer.analyze(frames[0].image, skip_qc=True)  # warm-up: the interpreter's first call allocates
    times, cells = [], []
    for v in frames:
        t0 = time.perf_counter()
        out = analyzer.analyze(v.image, skip_qc=True)
        times.append(time.perf_counter() - t0)
        cells.append(len(out.cells))
    t = np.array(times) * 1000
    per10 = float(np.median(t / np.maximum(cells, 1) * 10))
    out = {"bench": "field_cells", "bundle": bundle.name, "version": bundle.meta.version,
           "input": bundle.meta.input.size, "quantization": bundle.meta.input.quantization,
           "threads": args.threads, "frames": len(frames), "cells_per_frame_median": float(np.median(cells)),
           "ms_per_frame_median": round(float(np.median(t)), 1), "ms_per_frame_p90": round(float(np.percentile(t, 90)), 1),
           "ms_per_10_cells_median": round(per10, 1)}
    print(f"{bundle.name} {out['version']} ({out['quantization']}, {out['input']} px, {args.threads} thread(s)): "
          f"{out['cells_per_frame_median']:.0f} cells per frame, median {out['ms_per_frame_median']} ms per frame "
          f"(p90 {out['ms_per_frame_p90']}), {out['ms_per_10_cells_median']} ms per 10 cells")
    result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
