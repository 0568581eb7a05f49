"""How the cohort store scales: write time and memory for growing UK-Biobank-sized cohorts.

For each size N the script writes N random scans of 450 ROIs x 500 frames (float32, ~0.9 MB each)
through ``CohortWriter``, then reads the cohort back twice: random access to 200 scans through the
memory maps, and a streaming pass computing every scan's mean (checked against the means recorded
while writing). Every write and every read runs in a fresh child process, so
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the peak resident memory of that size alone.
Before each read pass the shard files are evicted from the page cache (``posix_fadvise
DONTNEED``; the writer fsyncs every shard, so its pages are clean), so reads come from the disk
-- or from the hypervisor's cache on a VM.

    python benchmarks/cohort_scaling.py                   # 250, 500, 1000, 2000, 4000 scans (~7.8 GB)
    python benchmarks/cohort_scaling.py --quick           # 50, 100, 200 scans, seconds
    python benchmarks/cohort_scaling.py --sizes 500,40000 --dir /scratch --out scaling.json

Prints one JSON object: per size the scans, GB, write seconds and MB/s, peak RSS of the writer and
of the reader, read times; a least-squares line of write seconds against scans (slope in s/scan,
R^2), and the ratio of the writer's peak RSS at the largest to the smallest size (1.0 = memory does
not grow with the cohort). Cohorts go to a temporary folder under --dir (default $TMPDIR) that is
deleted at the end, and each cohort is deleted as soon as it has been read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import peak_rss_mb, write_result

DEFAULT_SIZES = (250, 500, 1000, 2000, 4000)
QUICK_SIZES = (50, 100, 200)
N_ROIS, N_FRAMES = 450, 500  # UK Biobank: ~490 frames at TR 0.735 s; a 450-ROI parcellation
RANDOM_READS = 200
BYTES_PER_VALUE = 4  # float32


# -- child processes: one write or one read pass, printing a JSON line -------------------------
def anon_rss_mb() -> float | None:
    """Current anonymous (heap) resident memory: RSS without mapped file pages. Linux only."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


def child_write(root: Path, n_scans: int, n_rois: int, n_frames: int, shard_mb: float) -> dict:
    import pandas as pd

    from fmrilm.data.atlas import Atlas
    from fmrilm.data.cohort import CohortWriter
    from fmrilm.data.scan import Scan

    atlas = Atlas(
        "bench",
        pd.DataFrame(
            {
                "name": [f"ROI{i:03d}" for i in range(n_rois)],
                "x": np.linspace(-70, 70, n_rois),
                "y": np.linspace(-100, 70, n_rois),
                "z": np.linspace(-40, 80, n_rois),
            }
        ),
    )
    rng = np.random.default_rng(n_scans)
    means = np.empty(n_scans)
    rss_before = peak_rss_mb()
    gen_s = 0.0
    t0 = time.perf_counter()
    with CohortWriter(root, preprocessing={"benchmark": True}, shard_mb=shard_mb) as writer:
        writer.add_atlas(atlas)
        for i in range(n_scans):
            tg = time.perf_counter()
            data = rng.standard_normal((n_frames, n_rois), dtype=np.float32)  # (time, ROI)
            means[i] = data.mean(dtype=np.float64)
            gen_s += time.perf_counter() - tg
            scan = Scan(
                data,
                tr=0.735,
                atlas="bench",
                subject=f"{1000000 + i}",
                session="2",
                site=f"site{i % 4}",
                phenotypes={"age": 40 + i % 30, "sex": "FM"[i % 2]},
                qc={"tsnr": 50.0, "fd_mean": 0.1},
            )
            writer.add(scan)
            del data, scan
    total_s = time.perf_counter() - t0
    np.save(root.parent / f"{root.name}-means.npy", means)
    return {
        "total_s": total_s,
        "gen_s": gen_s,
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_import_mb": rss_before,
        "shards": len(list((root / "arrays").glob("shard-*.f32"))),
    }


def evict_from_page_cache(root: Path) -> None:
    """Drop the cohort's shard pages from the page cache so the next read hits the disk."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in (root / "arrays").glob("shard-*.f32"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def child_read(root: Path, n_random: int) -> dict:
    import gc

    from fmrilm.data.cohort import Cohort

    expected = np.load(root.parent / f"{root.name}-means.npy")
    rss_import = peak_rss_mb()

    evict_from_page_cache(root)
    cohort = Cohort(root)
    picks = np.random.default_rng(0).choice(
        len(cohort), size=min(n_random, len(cohort)), replace=False
    )
    t0 = time.perf_counter()
    random_means = np.array(
        [np.asarray(cohort.series(int(i))).mean(dtype=np.float64) for i in picks]
    )
    random_s = time.perf_counter() - t0
    random_rss = peak_rss_mb()
    random_ok = bool(np.allclose(random_means, expected[picks], rtol=0, atol=1e-9))
    del cohort  # unmap the shards so their pages can be evicted again
    gc.collect()

    evict_from_page_cache(root)
    cohort = Cohort(root)
    means = np.empty(len(cohort))
    anon_peak = anon_rss_mb() or 0.0
    t0 = time.perf_counter()
    for i in range(len(cohort)):
        means[i] = np.asarray(cohort.series(i)).mean(dtype=np.float64)  # (n_frames, n_rois) map
        if i % 50 == 0:
            anon_peak = max(anon_peak, anon_rss_mb() or 0.0)
    stream_s = time.perf_counter() - t0
    anon_peak = max(anon_peak, anon_rss_mb() or 0.0)
    return {
        "random_s": random_s,
        "random_scans": len(picks),
        "random_peak_rss_mb": random_rss,
        "stream_s": stream_s,
        "stream_peak_rss_mb": peak_rss_mb(),
        "stream_peak_anon_rss_mb": anon_peak if anon_rss_mb() is not None else None,
        "rss_after_import_mb": rss_import,
        "means_match": random_ok and bool(np.allclose(means, expected, rtol=0, atol=1e-9)),
    }


# -- parent: one size at a time, then the summary ----------------------------------------------
def run_child(args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child {args[:2]} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(size: int, workdir: Path, n_rois: int, n_frames: int, shard_mb: float) -> dict:
    root = workdir / f"cohort-{size}"
    common = ["--root", str(root), "--rois", str(n_rois), "--frames", str(n_frames)]
    try:
        w = run_child(
            ["--child", "write", "--scans", str(size), "--shard-mb", str(shard_mb), *common]
        )
        r = run_child(["--child", "read", *common])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        (workdir / f"{root.name}-means.npy").unlink(missing_ok=True)
    gb = size * n_rois * n_frames * BYTES_PER_VALUE / 1e9
    write_s = w["total_s"] - w["gen_s"]  # time inside CohortWriter: validation, writes, commits
    return {
        "scans": size,
        "GB": round(gb, 3),
        "shards": w["shards"],
        "write_s": round(write_s, 3),
        "generate_s": round(w["gen_s"], 3),
        "MB_per_s": round(gb * 1e3 / write_s, 1),
        "peak_rss_mb": round(w["peak_rss_mb"], 1),
        "rss_after_imports_mb": round(w["rss_after_import_mb"], 1),
        "read": {
            "random_scans": r["random_scans"],
            "random_s": round(r["random_s"], 3),
            "random_ms_per_scan": round(1e3 * r["random_s"] / r["random_scans"], 2),
            "random_peak_rss_mb": round(r["random_peak_rss_mb"], 1),
            "stream_s": round(r["stream_s"], 3),
            "stream_MB_per_s": round(gb * 1e3 / r["stream_s"], 1),
            "stream_peak_rss_mb": round(r["stream_peak_rss_mb"], 1),
            "stream_peak_anon_rss_mb": None
            if r["stream_peak_anon_rss_mb"] is None
            else round(r["stream_peak_anon_rss_mb"], 1),
            "means_match": r["means_match"],
        },
    }


def linear_fit(x: list[float], y: list[float]) -> dict:
    """Least-squares y = slope * x + intercept, with R^2."""
    x_, y_ = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    slope, intercept = np.polyfit(x_, y_, 1)
    residual = y_ - (slope * x_ + intercept)
    total = ((y_ - y_.mean()) ** 2).sum()
    r2 = 1.0 - (residual**2).sum() / total if total > 0 else 1.0
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def check_disk(workdir: Path, sizes: list[int], n_rois: int, n_frames: int) -> int:
    """Refuse to start when the largest cohort (the only one on disk at a time) would not fit."""
    need = int(max(sizes) * n_rois * n_frames * BYTES_PER_VALUE * 1.05) + 256 * 2**20
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SystemExit(
            f"not enough disk under {workdir}: the largest cohort needs {need / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free; pass smaller --sizes or another --dir"
        )
    return free


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", help="comma-separated scan counts (default 250,500,1000,2000,4000)")
    p.add_argument(
        "--quick", action="store_true", help="sizes 50,100,200 with 64 MB shards (a test)"
    )
    p.add_argument("--dir", type=Path, help="where to write the cohorts (default $TMPDIR)")
    p.add_argument("--rois", type=int, default=N_ROIS)
    p.add_argument("--frames", type=int, default=N_FRAMES)
    p.add_argument(
        "--shard-mb", type=float, help="CohortWriter shard size (default 256; 64 with --quick)"
    )
    p.add_argument("--out", type=Path, help="also write the JSON to this file")
    # internal: run one pass in this (child) process
    p.add_argument("--child", choices=("write", "read"), help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--scans", type=int, help=argparse.SUPPRESS)
    return p


def _fit_summary(fit: dict) -> dict:
    return {
        "s_per_scan": round(fit["slope"], 6),
        "intercept_s": round(fit["intercept"], 3),
        "r2": round(fit["r2"], 4),
    }


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)

    if args.child == "write":
        print(json.dumps(child_write(args.root, args.scans, args.rois, args.frames, args.shard_mb)))
        return 0
    if args.child == "read":
        print(json.dumps(child_read(args.root, RANDOM_READS)))
        return 0

    if args.sizes:
        try:
            sizes = sorted({int(s) for s in args.sizes.split(",")})
        except ValueError:
            p.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
        if sizes[0] < 2:
            p.error("--sizes must be at least 2 scans each")
    else:
        sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if len(sizes) < 2:
        p.error("--sizes needs at least two sizes (for the fit)")
    shard_mb = args.shard_mb or (64.0 if args.quick else 256.0)
    base = args.dir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    free = check_disk(base, sizes, args.rois, args.frames)
    workdir = Path(tempfile.mkdtemp(prefix="fmrilm-cohort-scaling-", dir=base))
    try:
        rows = []
        for size in sizes:
            rows.append(measure(size, workdir, args.rois, args.frames, shard_mb))
            print(
                f"{size:>6} scans {rows[-1]['GB']:6.2f} GB  write {rows[-1]['write_s']:7.2f} s "
                f"({rows[-1]['MB_per_s']:.0f} MB/s, peak RSS {rows[-1]['peak_rss_mb']:.0f} MB)  "
                f"stream {rows[-1]['read']['stream_s']:.2f} s",
                file=sys.stderr,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    fit = linear_fit([r["scans"] for r in rows], [r["write_s"] for r in rows])
    stream_fit = linear_fit([r["scans"] for r in rows], [r["read"]["stream_s"] for r in rows])
    result = {
        "config": {
            "rois": args.rois,
            "frames": args.frames,
            "dtype": "float32",
            "shard_mb": shard_mb,
            "random_reads": RANDOM_READS,
            "page_cache": "evicted before each read pass (posix_fadvise DONTNEED)",
            "dir_free_gb": round(free / 1e9, 1),
        },
        "sizes": rows,
        "write_fit": _fit_summary(fit),
        "stream_fit": _fit_summary(stream_fit),
        "peak_rss_ratio_largest_vs_smallest": round(
            rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"], 3
        ),
        "read_peak_rss_ratio_largest_vs_smallest": round(
            rows[-1]["read"]["stream_peak_rss_mb"] / rows[0]["read"]["stream_peak_rss_mb"], 3
        ),
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
