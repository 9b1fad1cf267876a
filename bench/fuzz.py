"""Fuzz the image decoding, QC, cell finding and cropping entry points and every form
endpoint with Hypothesis: the properties of tests/test_fuzz.py, many more examples.

    python -m bench.fuzz [--examples 1500]     # 7 properties x 1500 = 10,500 cases
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench import result

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=1500, help="examples per property")
    args = ap.parse_args(argv)
    env = dict(os.environ, LEUKOSCOPE_FUZZ_EXAMPLES=str(args.examples))
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py",
                          "--hypothesis-show-statistics"], cwd=REPO, env=env, capture_output=True, text=True)
    print("\n".join(line for line in out.stdout.splitlines() if "passed" in line or "failed" in line or "Falsifying" in line))
    passed = int(m.group(1)) if (m := re.search(r"(\d+) passed", out.stdout)) else 0
    failed = int(m.group(1)) if (m := re.search(r"(\d+) failed", out.stdout)) else 0
    # Hypothesis reports how many examples each property really ran
    ran = sum(int(n) for n in re.findall(r"- (\d+) passing, \d+ failing", out.stdout))
    result({"bench": "fuzz", "properties": passed + failed, "passed": passed, "failed": failed,
            "examples_per_property": args.examples, "cases_run": ran,
            "minutes": round((time.monotonic() - t0) / 60, 1)})
    return out.returncode


if __name__ == "__main__":
    raise SystemExit(main())
