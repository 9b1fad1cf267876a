"""The whole device path on real BCCD fields, the default bundle and a real SQLite file."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from device.model.bundle import load_bundle
from device.config import AppConfig
from device.box.runtime import build_runtime
from testkit import BCCD, REPO


@pytest.fixture
def runtime(tmp_path):
    cfg = AppConfig()
    cfg.storage.data_dir = str(tmp_path / "data")
    cfg.camera.folder = str(tmp_path / "fields")
    shutil.copytree(REPO / "device/assets/fields", tmp_path / "fields")
    cfg.sample.target_cells = 5
    rt = build_runtime(cfg)
    yield rt
    rt.stop()


def test_default_bundle_loads_without_tensorflow_code_path():
    b = load_bundle()
    assert b.metadata["task"] == "screen" and "malignant" in b.categories
    assert b.metadata["input"]["dtype"] == "int8"
    assert len(b.model_bytes) <= 4 * 1024 * 1024  # issue 20: the int8 model may grow to 4 MB
    assert "CC BY 4.0" in json.dumps(b.metadata["datasets"])


def test_capture_loop_stores_fields_cells_and_counts(runtime):
    from device.records import samples as records

    store = runtime.store
    sid = records.create_sample(store, "S-001", "tester", target=5)
    results = [runtime.loop.capture(sid, "tester") for _ in range(14)]
    ok = [r for r in results if r["qc_ok"]]
    rejected = [r for r in results if not r["qc_ok"]]
    # the bundled out-of-focus field is refused in words, the rest analysed
    assert len(rejected) == 1 and "out of focus" in rejected[0]["qc_message"].lower()
    assert rejected[0]["cells"] == []
    assert sum(len(r["cells"]) for r in ok) >= 12
    for r in ok:
        for c in r["cells"]:
            x1, y1, x2, y2 = c["box"]
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
            assert c["category"] in ("normal", "atypical", "non-leukocyte", "malignant", "uncertain")
    conn = store.connect()
    n_fields = conn.execute("SELECT COUNT(*) FROM fields WHERE sample_id = ?", (sid,)).fetchone()[0]
    n_cells = conn.execute("SELECT COUNT(*) FROM cells WHERE sample_id = ?", (sid,)).fetchone()[0]
    assert n_fields == 14 and n_cells == sum(len(r["cells"]) for r in results)
    for (path,) in conn.execute("SELECT image_path FROM fields UNION SELECT crop_path FROM cells"):
        assert (store.data_dir / path).is_file()
    summary = results[-1]["summary"]
    # 13 bundled fields: the 14th capture is the first view again, held out of the count (issue 21)
    held = records.held_fields(store, sid)
    assert [json.loads(f["qc_json"])["repeat_of"] for f in held] == [results[0]["field_id"]]
    repeat_cells = len(results[-1]["cells"])
    assert repeat_cells == len(results[0]["cells"]) > 0
    counted = summary["leukocytes"] + summary["uncertain"] + summary["by_category"]["non-leukocyte"]
    assert counted == n_cells - repeat_cells
    assert summary["target"] == 5 and "not a diagnosis" in summary["disclaimer"]
    assert store.consistency_check().repaired == 0
    summ = records.finish_sample(store, sid, "tester", runtime.config.sample.flags)
    assert summ.leukocytes == summary["leukocytes"]
    with pytest.raises(records.RecordError, match="finished"):
        records.save_field(store, sid, None, None, "tester")


def test_capture_reports_a_vanished_camera_and_recovers(runtime, tmp_path):
    import time

    from device.records import samples as records
    from device.box.capture import CaptureError

    sid = records.create_sample(runtime.store, "S-002", "tester")
    assert runtime.loop.capture(sid, "tester")["field_id"]
    (tmp_path / "fields").rename(tmp_path / "gone")
    with pytest.raises(CaptureError, match="camera not available"):
        runtime.loop.capture(sid, "tester")
    assert runtime.loop.state()["camera"]["status"] == "disconnected"
    (tmp_path / "gone").rename(tmp_path / "fields")
    t0 = time.monotonic()
    while True:
        try:
            runtime.loop.capture(sid, "tester")
            break
        except CaptureError:
            assert time.monotonic() - t0 < 5.0
            time.sleep(0.1)
    assert runtime.loop.state()["camera"]["status"] == "ok"


def test_analyze_command_prints_boxes_and_labels():
    imgs = [BCCD / "BCCD/JPEGImages/BloodImage_00010.jpg", REPO / "device/assets/fields/BloodImage_00004z-out-of-focus.jpg"]
    out = subprocess.run([sys.executable, "-m", "device.cli", "analyze", "--json", *map(str, imgs)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    a, b = (json.loads(line) for line in out.stdout.splitlines())
    assert a["analysed"] and len(a["cells"]) >= 1  # its second cell is cut by the edge: left out
    for c in a["cells"]:
        assert len(c["box"]) == 4 and {"label", "category", "probability"} <= set(c)
    assert {"edge_um", "background", "clipped", "cell_fraction", "um_per_px"} <= set(a["qc"])
    assert a["scale"]["source"] == "red cells" and 0.06 < a["scale"]["um_per_px"] < 0.12, a["scale"]
    assert not b["analysed"] and b["cells"] == [] and "out of focus" in b["qc"]["problems"][0].lower()


def test_analyze_refuses_an_unreadable_file(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "device.cli", "analyze", "--json", str(bad)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "not an image file" in json.loads(out.stdout)["error"]


def test_a_12_megapixel_frame_costs_one_resample_more_and_finds_the_same_cells():
    """The HQ camera's full frame: same cells (boxes in its own pixels) and CPU time per field
    that does not grow with the megapixels beyond one resample (measured as thread CPU time,
    which another process's load does not inflate much)."""
    import time

    import cv2

    from device.model.bundle import load_bundle
    from device.model.classifier import Classifier
    from device.imageio import read_image
    from device.model.analyzer import Analyzer

    img = read_image(REPO / "device/assets/fields/BloodImage_00010.jpg")
    big = cv2.resize(img, (4056, 3040), interpolation=cv2.INTER_CUBIC)
    analyzer = Analyzer(Classifier(load_bundle()))

    def cpu(frame):
        analyzer.analyze(frame)
        times = []
        for _ in range(4):
            t0 = time.thread_time()
            res = analyzer.analyze(frame)
            times.append(time.thread_time() - t0)
        return res, sorted(times)[1]

    small_res, small_t = cpu(img)
    big_res, big_t = cpu(big)
    assert big_res.qc.ok and len(big_res.cells) == len(small_res.cells) == 1  # the second is cut by the edge
    f = 4056 / 640
    for a, b in zip(sorted(c.found.box for c in small_res.cells), sorted(c.found.box for c in big_res.cells)):
        assert all(abs(x * f - y) <= 0.05 * 4056 for x, y in zip(a, b)), (a, b)
    assert abs(big_res.scale.um_per_px * f / small_res.scale.um_per_px - 1) < 0.1
    assert big_t < 4 * small_t + 0.05, (small_t, big_t)  # 12.6x the pixels


def test_boxes_of_a_large_frame_are_drawn_on_the_frame_size_not_the_stored_copy(tmp_path):
    """A 12 MP camera frame is stored as a bounded copy; its cells' boxes stay in frame pixels,
    and what the page is given to draw them (width, height) is the frame's size."""
    import cv2

    from device.records import samples as records
    from device.imageio import read_image
    from testkit.web import serving

    big = cv2.resize(read_image(REPO / "device/assets/fields/BloodImage_00010.jpg"), (4056, 3040),
                     interpolation=cv2.INTER_CUBIC)
    with serving(tmp_path) as (base, app, rt):
        sid = records.create_sample(rt.store, "BIG", "t")
        r = rt.loop.capture(sid, "t", image=big, source="test")
        assert (r["width"], r["height"]) == (4056, 3040) and r["cells"]
        assert r["scale"]["source"] == "red cells" and 0.008 < r["scale"]["um_per_px"] < 0.02
        row = rt.store.connect().execute("SELECT image_path, width, height FROM fields WHERE id = ?",
                                         (r["field_id"],)).fetchone()
        stored = read_image(rt.store.path(row["image_path"]))
        assert (row["width"], row["height"]) == (4056, 3040) and max(stored.shape[:2]) == 1600
        assert max(c["box"][2] for c in r["cells"]) > 1600  # frame coordinates, not the stored copy's
