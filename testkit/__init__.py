"""Helpers shared by the tests (tests/) and the benches (bench/): the repository's paths, the shared data,
small real files, HTTP sign-in, an in-process server and a ``leukoscope serve`` process. Neither tests/ nor
bench/ imports the other for these; this package imports neither."""
from __future__ import annotations

import socket
from pathlib import Path

import numpy as np

from training.recorded import SHARED_DATA as _SHARED, data_root

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = _SHARED.resolve()  # where the datasets live: training.recorded says, in one place


def _dataset(name: str) -> Path:
    """A dataset's folder in the shared data, by the one map (training.recorded.data_root: the subsets' folders)."""
    return SHARED_DATA / data_root(name).relative_to(_SHARED)


PBC = _dataset("pbc-normal-wbc")
AML = _dataset("aml-cytomorphology-lmu")
BCCD = _dataset("bccd")
MLL = _dataset("bone-marrow-mll")
# A rapid stain on yellow glass, a low-cost camera; no pixel size stated: its red cells say about 0.14
# (python -m bench.scale). Test-only: never trained on.
JIANGXI = _dataset("jiangxi-tecom-wbc")
JIANGXI_UM_PER_PX = 0.14


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_image(path: Path, seed: int, size: int = 32, fmt: str | None = None) -> Path:
    """A small, distinct image (seeded noise on a blob) in the format the suffix names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def wait_until(condition, what: str, timeout: float = 10.0, every: float = 0.02):
    """Poll ``condition()`` until it is true (returned) or ``timeout`` seconds pass: then fail naming
    ``what`` was awaited. For tests: a condition with a deadline, never a fixed sleep."""
    import time

    t0 = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() - t0 < timeout, f"waited {timeout} s for {what}"
        time.sleep(every)


def joined(threads, timeout: float = 60.0) -> None:
    """Join ``threads`` within ``timeout`` seconds in all, failing with the names of those still running."""
    import time

    end = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"still running after {timeout} s: {alive}"
