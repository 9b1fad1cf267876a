"""Every bench command runs in its fast mode and ends with one parseable RESULT line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testkit import REPO

pytestmark = pytest.mark.bench  # each runs python -m bench.X in a subprocess


def run_bench(*args, timeout=600) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                         env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), out.stdout[-2000:]
    return json.loads(last[len("RESULT "):])


@pytest.mark.tensorflow
def test_train_eval_quick(tmp_path):
    pytest.importorskip("tensorflow")
    r = run_bench("bench.train_eval", "--task", "differential", "--quick", "--out", str(tmp_path))
    assert r["quick"] and r["test_images"] == 8 * 40
    # one cell per image, but for single platelets (below the finder's smallest nucleus)
    assert r["test_cells"] == r["test_images"] - r["test_images_without_cell"] >= 8 * 40 - 20
    assert 0.0 <= r["balanced_accuracy"] <= 1.0
    # two epochs on 40 images per class already beat chance (1/8) by far
    assert r["balanced_accuracy"] > 0.3, r


@pytest.mark.tensorflow
def test_latency_quick():
    pytest.importorskip("tensorflow")
    r = run_bench("bench.latency", "--quick")
    assert r["runtime"] == "ai-edge-litert"
    assert r["int8_litert_1t"]["median_ms"] > 0
    assert r["int8_litert_over_keras"] < 1.0  # the full bench reports the real ratio


def test_detect_bccd_test_split():
    r = run_bench("bench.detect_bccd", "--split", "test")
    assert r["fields"] == 72 and r["recall"] >= 0.98


def test_detect_bccd_on_other_stains_fast():
    r = run_bench("bench.detect_bccd", "--stain", "all", "--split", "test")
    assert len(r["looks"]) >= 4 and r["worst_recall"] >= 0.9, r["looks"]
    assert sum(look["recall"] >= 0.95 for look in r["looks"].values()) >= 4


def test_detect_bccd_single_cell_drift_fast():
    # today's finder against the B - G-only one it replaced, on the sets the model trains and tests on
    r = run_bench("bench.detect_bccd", "--single-cell", "20")["single_cell"]
    jx = r["jiangxi-tecom-wbc"]
    assert jx["no_cell_after"] < jx["no_cell_before"] and jx["no_cell_after"] <= 1, jx
    for name in ("pbc-normal-wbc", "bone-marrow-mll", "aml-cytomorphology-lmu"):
        assert r[name]["central_moved_over_2um"] <= 1 and r[name]["no_cell_after"] <= r[name]["no_cell_before"], r


def test_pipeline_short():
    r = run_bench("bench.pipeline", "--fields", "15")
    assert r["fields"] == 15 and r["frame_to_commit_median_ms"] > 0 and r["peak_rss_mb"] > 0


def test_blast_screen_fast():
    """The screen's figures on the shipped bundle: every figure with its counts and a Wilson interval that
    contains it; the AML-LMU set is used whole (22 blasts, 63 normal-type cells)."""
    r = run_bench("bench.blast_screen", "--fast")
    assert r["fast"] and 0 < r["review_from"] <= r["operating_point"] < 1

    def check(s, n=None):
        assert 0 <= s["k"] <= s["n"] and (n is None or s["n"] == n), s
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1]

    ul = r["unseen_lab"]
    for key in ("strict_sensitivity", "screening_sensitivity"):
        check(ul[key], 22)
    check(ul["specificity"], 63)
    assert ul["screening_sensitivity"]["k"] >= ul["strict_sensitivity"]["k"]
    for key in ("sensitivity", "specificity"):
        check(r["in_lab"][key])
    assert r["in_lab"]["sensitivity"]["n"] == 20  # 20 blasts in the fast mode
    assert 0.5 < r["in_lab"]["roc_auc"] <= 1.0
    assert 0.5 < r["pbc_differential"]["balanced_accuracy"] <= 1.0
    rows = {row["blast_fraction"]: row for row in r["per_sample"]}
    assert set(rows) == {0.0, 0.05} and all(row["samples"] == 40 for row in rows.values())
    assert rows[0.05]["refer"]["k"] >= rows[0.0]["refer"]["k"]  # more blasts never refer less often here
    assert "not_measured" in r["other_lab_normals"]


def test_load_short():
    r = run_bench("bench.load", "--clients", "10", "--seconds", "4")
    assert r["errors"] == 0 and r["status"]["requests"] > 20, r.get("error_codes")
    assert {"page", "capture", "export"} <= set(r) and r["page"]["p99_ms"] >= r["page"]["p50_ms"]


def test_soak_short():
    r = run_bench("bench.soak", "--cycles", "120", "--warmup", "30")
    assert r["errors"] == 0 and r["cycles"] == 120
    assert r["rss_growth_mb"] < 30  # the full bench holds it to 10 MB over 10,000 cycles


def test_fuzz_bench_counts_cases():
    r = run_bench("bench.fuzz", "--examples", "10")
    assert r["failed"] == 0 and r["properties"] == 7 and r["cases_run"] >= 70


def test_powercut_bench_short():
    r = run_bench("bench.powercut", "--cycles", "5")
    assert r["cycles"] == 5 and r["failures"] == [] and r["acknowledged_lost"] == 0 and r["clients"] == 4


def test_scale_fast():
    r = run_bench("bench.scale", "--fast")
    assert r["bccd"]["deviation_p90"] < 0.25 and 0.07 < r["bccd"]["um_per_px_median"] < 0.1
    assert abs(r["pbc-normal-wbc"]["um_per_px_median"] / r["pbc-normal-wbc"]["stated_um_per_px"] - 1) < 0.1
    jx = r["jiangxi-tecom-wbc"]  # 120 x 120 frames: read from a handful of red cells
    assert jx["images"] == 12 and jx["confident"] >= 4 and 0.11 < jx["um_per_px_median"] < 0.18, jx


def test_qc_fast():
    r = run_bench("bench.qc", "--every", "30")
    assert r["real"]["as photographed"]["pass_rate"] >= 0.9
    assert all(d["right_message_rate"] >= 0.9 for d in r["degraded"].values()), r["degraded"]


def test_detect_at_half_magnification_fast():
    r = run_bench("bench.detect_bccd", "--magnification", "0.5", "--limit", "40")
    assert r["recall"] >= 0.93 and r["precision"] >= 0.93, r


def test_pipeline_at_the_hq_camera_size_fast():
    r = run_bench("bench.pipeline", "--fields", "6", "--size", "4056x3040", "--no-ready")
    assert r["size"] == "4056x3040" and r["cells"] > 0


def test_domain_check_fast():
    r = run_bench("bench.domain_check", "--limit", "40")
    # Another lab's white cells: called leukocytes or left for review, hardly ever something else.
    assert r["cells"] >= 35 and r["called_non_leukocyte"] <= 0.1, r


def test_cross_lab_fast():
    """The any-lab protocol on the shipped bundle and a prototype baseline: every held-out lab with the keys a
    script reads, counts inside their intervals, and the leave-PBC-out lab for the baseline."""
    r = run_bench("bench.cross_lab", "--fast", "--baseline-seeds", "1", "--baseline-dir", "/tmp/leukoscope-cl-fast")
    labs = r["labs"]
    assert {"aml-lmu", "jiangxi", "bccd", "marrow"} <= set(labs)
    for lab in ("aml-lmu", "jiangxi", "bccd"):
        for key in ("normal_called_blast", "normal_review", "blast_auc", "screen_sensitivity", "no_cell"):
            assert key in labs[lab], (lab, key)
        assert 0 <= labs[lab]["normal_called_blast"] <= 1 and 0 <= labs[lab]["no_cell"] <= 1
    assert labs["aml-lmu"]["blast_auc"] is not None and 0 < labs["aml-lmu"]["screen_sensitivity"] <= 1
    assert labs["jiangxi"]["blast_auc"] is None and labs["jiangxi"]["referred_5"] is None  # no blasts there
    shipped = r["models"][r["chosen"]]["labs"]["aml-lmu"]["per_seed"][0]
    for key in ("normal_passed", "normal_review_n", "normal_called_blast_n", "normal_other_category"):
        s = shipped[key]
        assert s["ci95"][0] <= s["value"] <= s["ci95"][1] and s["n"] == shipped["normal_cells"]
    assert sum(shipped[k]["k"] for k in ("normal_passed", "normal_review_n", "normal_called_blast_n",
                                         "normal_other_category")) == shipped["normal_cells"]
    base = r["models"]["prototype-baseline"]["labs"]
    assert {"aml-lmu", "jiangxi", "bccd", "marrow", "pbc"} <= set(base)
    assert base["pbc"]["summary"]["normal_called_blast"]["seeds"]


def test_field_cells_short():
    """A frame with about ten white cells through the device's analysis: cells found, a time per frame."""
    r = run_bench("bench.field_cells", "--frames", "3")
    assert r["frames"] == 3 and r["cells_per_frame_median"] >= 6
    assert 0 < r["ms_per_frame_median"] <= r["ms_per_frame_p90"] and r["ms_per_10_cells_median"] > 0
