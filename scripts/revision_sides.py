"""What check_bitwise.py, check_batched.py and check_attack_sides.py share: the same work run once with a git
revision's code and once with the working tree's, each side in its own driver process (`SCRIPT --driver
SPEC.json`) whose PYTHONPATH is that side's src/, one thread each unless OMP_NUM_THREADS says otherwise; and the
comparison of a quantity both sides recorded."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def resolve_rev(rev: str) -> str | None:
    """The short hash of `rev`, or None (after one error line) when git does not know it."""
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True)
    if r.returncode:
        print(f"error: unknown revision {rev!r}", file=sys.stderr)
        return None
    return r.stdout.strip()


@contextlib.contextmanager
def revision_tree(rev: str, tmp: Path, keep: bool = False):
    """A detached worktree of `rev` under `tmp`, removed afterwards (with `tmp` itself unless `keep`)."""
    wt = tmp / f"rev-{rev}"
    try:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(wt), rev], check=True,
                       capture_output=True)
        yield wt
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)], capture_output=True)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run_sides(script: str, tmp: Path, wt: Path, jobs: int, make_spec, describe) -> bool:
    """Run `script --driver tmp/<side>.json` for side "revision" (wt/src) and "working" (ROOT/src), one after
    the other or both at once (jobs >= 2). make_spec(side, src, out) gives the side's spec (out: tmp/<side>,
    where the driver writes); describe(side, src, spec) the progress line. False (after one error line) when
    a driver failed."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", "1"))
    procs = []
    for side, src in (("revision", wt / "src"), ("working", ROOT / "src")):
        out = tmp / side
        out.mkdir(exist_ok=True)
        spec = make_spec(side, src, out)
        (tmp / f"{side}.json").write_text(json.dumps(spec))
        print(describe(side, src, spec), file=sys.stderr, flush=True)
        p = subprocess.Popen([sys.executable, script, "--driver", str(tmp / f"{side}.json")],
                             env=dict(env, PYTHONPATH=str(src)), cwd=str(tmp))
        procs.append(p)
        if jobs < 2:
            p.wait()
    codes = [p.wait() for p in procs]
    if any(codes):
        print("error: a driver failed", file=sys.stderr)
        return False
    return True


def sample_comparison(la, lb, names: tuple[str, str], paired: str, column: str = "loop") -> list[str]:
    """Markdown lines comparing two sides' samples of one quantity, element i of each from the same case
    (`paired` says which): their statistics (n, mean, std, quartiles, max), a two-sample Kolmogorov-Smirnov
    test (scipy.stats.ks_2samp) and the paired relative difference (median, 95th percentile, max)."""
    import numpy as np
    from scipy.stats import ks_2samp

    la, lb = np.asarray(la, dtype=float), np.asarray(lb, dtype=float)
    lines = [f"| {column} | n | mean | std | 25% | median | 75% | max |", "|---|---|---|---|---|---|---|---|"]
    for name, x in zip(names, (la, lb)):
        q = np.percentile(x, [25, 50, 75])
        lines.append(f"| {name} | {len(x)} | {x.mean():.3e} | {x.std():.3e} | {q[0]:.3e} | {q[1]:.3e} | {q[2]:.3e} | "
                     f"{x.max():.3e} |")
    ks = ks_2samp(la, lb)
    rel = np.abs(lb - la) / np.maximum(np.abs(la), 1e-12)
    return lines + ["", f"Two-sample Kolmogorov-Smirnov: D = {ks.statistic:.4f}, p = {ks.pvalue:.3f}. Paired ({paired}): "
                        f"median relative difference {np.median(rel):.2e}, 95th percentile "
                        f"{np.percentile(rel, 95):.2e}, max {rel.max():.2e}."]
