"""Mini model fidelity: generate in-vocabulary prompts at default settings and judge them.

Writes out/bench/fidelity.json and prints the table used in docs/mini-world.md.
Options: --guidance/--steps to sweep settings (the defaults are what `igmu generate` uses).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

TARGETS = {"object": 0.90, "color": 0.90, "style": 0.85, "identity": 0.80, "carrier": 0.90, "pair": 0.70}


def main():
    import warnings

    warnings.filterwarnings("ignore")
    from igmu.generate import DEFAULT_GUIDANCE, DEFAULT_STEPS, GenSettings
    from igmu.models.load import load_pipeline
    from igmu.world.fidelity import measure_fidelity
    from igmu.world.judges import Detector

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="mini")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="out/bench/fidelity.json")
    a = ap.parse_args()
    t = time.time()
    res, *_ = measure_fidelity(load_pipeline(a.model), Detector.load(), GenSettings(a.steps, a.guidance), seed=a.seed)
    print(f"fidelity, model={a.model} steps={a.steps} guidance={a.guidance} ({time.time() - t:.0f} s)")
    print("| check | rate | n | 95% CI | target |\n|---|---|---|---|---|")
    ok = True
    for k, v in res.items():
        tgt = TARGETS.get(k)
        ok &= tgt is None or v["rate"] >= tgt
        print(f"| {k} | {v['rate']:.1%} | {v['n']} | {v['ci95'][0]:.1%}-{v['ci95'][1]:.1%} | "
              f"{'>= %d%%' % round(tgt * 100) if tgt else '-'} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"settings": vars(a), "fidelity": res, "targets": TARGETS}, indent=1))
    print("all targets met" if ok else "SOME TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
