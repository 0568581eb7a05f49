"""The cohort scaling benchmark runs end to end (its --quick mode) and reports sane numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "cohort_scaling.py"


def test_cohort_scaling_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert list(tmp_path.iterdir()) == []  # cohorts deleted afterwards

    assert result["config"]["rois"] == 450 and result["config"]["frames"] == 500
    rows = result["sizes"]
    assert [r["scans"] for r in rows] == [50, 100, 200]
    for r in rows:
        assert r["GB"] == pytest.approx(r["scans"] * 450 * 500 * 4 / 1e9, abs=1e-3)
        assert r["write_s"] > 0 and r["MB_per_s"] == pytest.approx(
            r["GB"] * 1e3 / r["write_s"], rel=0.01
        )
        assert 20 < r["peak_rss_mb"] < 2000
        # a 64 MiB shard closes after the scan that fills it: ceil(2**26 / 900_000) = 75 scans
        assert r["shards"] == -(-r["scans"] // 75)
        read = r["read"]
        assert read["means_match"] is True  # the streaming pass read back what was written
        assert read["random_scans"] == min(200, r["scans"])
        assert read["random_s"] > 0 and read["stream_s"] > 0
        assert 20 < read["stream_peak_rss_mb"] < 4000
    # the writer's memory does not grow with the cohort (it streams scans to disk)
    assert 0.5 < result["peak_rss_ratio_largest_vs_smallest"] < 1.5
    fit = result["write_fit"]
    assert fit["s_per_scan"] > 0 and -1.0 <= fit["r2"] <= 1.0


def test_cohort_scaling_refuses_when_disk_is_too_small(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sizes", "10,10000000", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode != 0
    assert "not enough disk" in proc.stderr and "pass smaller --sizes" in proc.stderr
    assert list(tmp_path.iterdir()) == []
