"""Two threads analysing fields at once (training loads cells on a thread pool; on the box an upload's decode and
resize can run beside the capture loop's analysis). The red-cell ruler once switched OpenCV to one thread around
each circle transform; cv2.setNumThreads rebuilds OpenCV's thread pool under any other thread's running OpenCV
call, and the process died of a segmentation fault (seen in a test run that trained while loading cells)."""
from __future__ import annotations

import subprocess
import sys

from testkit import REPO

PROBE = r"""
import threading, time
import numpy as np
from device.imageio import read_image
from device.analysis.scale import estimate_scale
import cv2
img = read_image(sorted((ROOT / "device/assets/fields").glob("*.jpg"))[0])
grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
deadline = time.monotonic() + 6
def ruler():
    while time.monotonic() < deadline:
        estimate_scale(img, 0.1)
def other():  # what runs beside it: blurs and resizes, OpenCV's parallel loops
    while time.monotonic() < deadline:
        cv2.GaussianBlur(grey, (3, 3), 0)
        cv2.resize(img, (1280, 960))
threads = [threading.Thread(target=f) for f in (ruler, ruler, other, other)]
for t in threads: t.start()
for t in threads: t.join()
print("ok", estimate_scale(img, 0.1).um_per_px)
"""


def test_field_analysis_on_several_threads_at_once_does_not_crash_and_reads_the_same():
    code = f"from pathlib import Path\nROOT = Path({str(REPO)!r})\n" + PROBE
    runs = [subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
            for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, (r.returncode, r.stderr[-2000:])  # -11: the segmentation fault
    assert len({r.stdout.split()[-1] for r in runs}) == 1  # one thread for OpenCV: the same reading every time
