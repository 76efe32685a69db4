"""`make demo`: a small slice of the mini benchmark, then its report.

Runs `igmu bench` on benchmarks/demo.yaml (UCE and the negative-prompt baseline erasing the style
"striped" from the shipped mini model, evaluated on all five EvalIGMU aspects) and writes the HTML
report with `igmu report`. Rerunning reuses every finished cell and cached image.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

ROOT = Path(__file__).resolve().parent.parent


def main():
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--config", default=str(ROOT / "benchmarks" / "demo.yaml"))
    args = ap.parse_args()
    from igmu.bench.runner import run_bench
    from igmu.errors import UserError
    from igmu.report.bench_report import write_report

    out = Path(args.out)
    print(f"report: {out / 'report.html'} (written when the run ends)", flush=True)
    t0 = time.time()
    try:
        run_bench(Path(args.config), out, echo=lambda m: print(m, flush=True))
        paths = write_report(out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"demo done in {time.time() - t0:.0f} s")
    print(f"report: {paths['html']}")
    print(f"leaderboard: {paths['md']}")


if __name__ == "__main__":
    main()
