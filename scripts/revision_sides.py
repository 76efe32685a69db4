"""What check_bitwise.py and check_batched.py share: the same erasures run once with a git revision's code and
once with the working tree's, each side in its own driver process (`SCRIPT --driver SPEC.json`) whose PYTHONPATH
is that side's src/, one thread each unless OMP_NUM_THREADS says otherwise."""
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
