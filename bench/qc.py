"""Quality control, measured: how many real fields pass, at every magnification, sensor size and
lamp setting, and how many degraded fields are rejected with the right message.

Real: BCCD's 364 fields as photographed; at magnifications 0.33, 0.5, 1.5, 2 (bench.views);
resampled whole to 0.5x and 3x the pixels; with the lamp 30 % brighter or dimmer.
Degraded (from the same fields): Gaussian blur of 0.5, 1 and 2 um (physical defocus), 3 stops
under- and over-exposed, a blank slide. Targets: >= 98 % of real fields pass in every set;
>= 99 % of degraded fields rejected with the message of their fault.

    python -m bench.qc [--every 1]      # --every 5: a fifth of the fields (CI)
"""
from __future__ import annotations

import argparse

import cv2
import numpy as np

from bench import result
from testkit.bccd import BCCD_ROOT, bccd_fields, magnified, resampled


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=1, help="use every N-th field")
    args = ap.parse_args(argv)
    from device.analysis.pipeline import FieldLocator
    from device.analysis.qc import MESSAGES

    fields = bccd_fields(BCCD_ROOT)[:: args.every]
    um = 0.0837  # BCCD's scale by the red-cell ruler (bench.scale): blur sigmas are set in um
    real = {
        "as photographed": [v.image for v in fields],
        **{f"magnification {m:g}": [v.image for v in magnified(fields, m)] for m in (0.33, 0.5, 1.5, 2)},
        **{f"resolution {r:g}x": [resampled(v, r).image for v in fields[::3]] for r in (0.5, 3)},
        "lamp +30 %": [np.clip(v.image * 1.3, 0, 255).astype(np.uint8) for v in fields],
        "lamp -30 %": [(v.image * 0.7).astype(np.uint8) for v in fields],
    }
    degraded = {
        **{f"blur {s:g} um": ([cv2.GaussianBlur(v.image, (0, 0), s / um) for v in fields], "focus")
           for s in (0.5, 1.0, 2.0)},
        "3 stops under": ([(v.image / 8).astype(np.uint8) for v in fields], "dark"),
        "3 stops over": ([np.clip(v.image.astype(np.int32) * 8, 0, 255).astype(np.uint8) for v in fields], "bright"),
        "blank slide": ([np.full_like(v.image, int(np.percentile(v.image, 95))) for v in fields[:20]], "empty"),
    }
    out = {"bench": "qc", "fields": len(fields), "real": {}, "degraded": {}}
    for name, images in real.items():
        locator = FieldLocator()  # one microscope per set, as on the box
        qcs = [locator.locate(img).qc for img in images]
        reasons: dict[str, int] = {}
        for q in qcs:
            for p in q.problems:
                reasons[p] = reasons.get(p, 0) + 1
        out["real"][name] = {"n": len(qcs), "pass_rate": round(float(np.mean([q.ok for q in qcs])), 4),
                             "rejected_for": reasons}
        print(f"real {name:>18}: {out['real'][name]['pass_rate']:.1%} of {len(qcs)} pass {reasons or ''}")
    for name, (images, fault) in degraded.items():
        locator = FieldLocator()
        qcs = [locator.locate(img).qc for img in images]
        right = [(not q.ok) and MESSAGES[fault] in q.problems for q in qcs]
        out["degraded"][name] = {"n": len(qcs), "rejected_rate": round(float(np.mean([not q.ok for q in qcs])), 4),
                                 "right_message_rate": round(float(np.mean(right)), 4)}
        print(f"degraded {name:>14}: {np.mean([not q.ok for q in qcs]):.1%} rejected, "
              f"{np.mean(right):.1%} with '{MESSAGES[fault]}'")
    result(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
