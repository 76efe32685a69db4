"""Erase cost of a method whose published budget is too long to run often: CPU time of `igmu erase` on the mini
model at two fractions of the budget, and the linear extrapolation to the whole budget.

Every budget knob given with --scale is multiplied by the fraction (rounded, at least 1); everything else stays
at the method's defaults. The erasure runs in its own process; its CPU time (user + system, all threads) is
what the table reports, since wall time on a shared machine says little. One thread per process (set
OMP_NUM_THREADS=1): the CPU time is then also the wall time of an erasure alone on one core.

    python scripts/bench_erase_cost.py --method sdd --scale iterations --fractions 0.0667,0.1333
    python scripts/bench_erase_cost.py --method stereo --scale iterations,ti_steps,gallery_images --fractions 0.05,0.1

Prints and writes out/bench/erase_cost-<method>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def run(method: str, target: str, sets: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one `igmu erase` in a child process."""
    with tempfile.TemporaryDirectory() as d:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "igmu.cli", "erase", "--model", "mini", "--method", method, "--target", target,
               "--out", f"{d}/a"] + [x for kv in sets for x in ("--set", kv)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def main():
    from igmu.methods import get_method

    ap = argparse.ArgumentParser()
    ap.add_argument("--method", required=True)
    ap.add_argument("--target", default="circle")
    ap.add_argument("--scale", required=True, help="comma-separated budget options to scale")
    ap.add_argument("--fractions", default="0.05,0.1", help="two fractions of the published budget")
    a = ap.parse_args()
    m = get_method(a.method)
    knobs = a.scale.split(",")
    published = {k: m.Config.model_fields[k].default for k in knobs}
    fractions = [float(f) for f in a.fractions.split(",")]
    points = []
    for f in fractions:
        sets = [f"{k}={max(1, round(v * f))}" for k, v in published.items()]
        cpu, wall = run(a.method, a.target, sets)
        points.append({"fraction": f, "sets": sets, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1)})
        print(f"{a.method} {' '.join(sets)}: {cpu:.1f} s CPU, {wall:.1f} s wall", flush=True)
    (f1, c1), (f2, c2) = [(p["fraction"], p["cpu_s"]) for p in points]
    slope = (c2 - c1) / (f2 - f1)
    full = c1 + slope * (1 - f1)
    out = {"method": a.method, "published": published, "points": points, "cpu_s_at_published": round(full, 1),
           "fixed_cpu_s": round(c1 - slope * f1, 1)}
    Path("out/bench").mkdir(parents=True, exist_ok=True)
    Path(f"out/bench/erase_cost-{a.method}.json").write_text(json.dumps(out, indent=1))
    print(f"{a.method}: {full:.0f} s CPU at the published budget {published} (extrapolated; fixed part "
          f"{out['fixed_cpu_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
