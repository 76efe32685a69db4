"""Methods whose frozen-model samples are now drawn ahead in batches, against the loop before: the same loss
distribution, the same erasure.

ESD draws its x_t trajectories ahead of the updates, in batches (diffusion.sampling.PartialTrajectories);
AdvUnlearn takes the original model's predictions on its trajectory pool from the pool's own guided calls.
This runs the method on the mini model once with the code of a git revision before that change (checked out
in a temporary `git worktree`) and once with the working tree, for every (target, seed, setting), recording
the loss of every iteration and, after the erasure, the mini detector's check of forgetting and retain
(igmu.world.erasure_checks.measure: forget prompts that still show the target, retain prompts drawn as
asked). Both sides draw the same random numbers, so iteration i of one is iteration i of the other up to
kernel rounding (unless --working-sets changes the working side, e.g. ESD's opt-in xt_share). Prints:

  * per-iteration loss statistics of each side (mean, std, quartiles over all iterations of all runs),
    a two-sample Kolmogorov-Smirnov test between them (scipy.stats.ks_2samp), the mean loss per quarter of
    the run, and the paired relative difference of iteration i's loss between the sides;
  * forgetting / retain after each erasure, side by side, and the erase time of each side.

    python scripts/check_batched.py --rev ac3cfac                                  # ESD-x, default and strong
    python scripts/check_batched.py --rev ac3cfac --working-sets xt_share=4        # the opt-in trade
    python scripts/check_batched.py --rev ac3cfac --method advunlearn

Settings of ESD: "default" (ESD-x at its published defaults) and "strong" (lr 2e-3, so that the mini model
visibly forgets and the check compares erasures rather than two unchanged models); AdvUnlearn: "small"
(100 iterations, lr 2e-3, warm-up 20, 5 attack steps, 10 sampler steps: the defaults of revision ac3cfac, given
to both sides, since the defaults are now the published ones).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision_sides import ROOT, resolve_rev, revision_tree, run_sides, sample_comparison  # noqa: E402

SETTINGS = {"esd": {"default": ["train_method=xattn"], "strong": ["train_method=xattn", "lr=2e-3"]},
            # AdvUnlearn's defaults changed after ac3cfac (its mini scaling became the published values), so
            # both sides get the revision's values explicitly: the same configuration on both sides
            "advunlearn": {"small": ["iterations=100", "lr=2e-3", "warmup_iter=20", "attack_step=5",
                                     "sample_steps=10"]}}
KINDS = {"circle": "object", "striped": "style", "hex mark": "unsafe"}


def drive(spec_file: str) -> int:
    """Run every case with the igmu on PYTHONPATH; write <out>/runs.json."""
    import torch

    import igmu
    from igmu.artifacts import load_model
    from igmu.erase import run_erase
    from igmu.generate import GenSettings
    from igmu.world.erasure_checks import measure
    from igmu.world.judges import Detector

    spec = json.loads(Path(spec_file).read_text())
    if Path(igmu.__file__).resolve().parent.parent != Path(spec["src"]).resolve():
        print(f"igmu imported from {igmu.__file__}, expected {spec['src']}", file=sys.stderr)
        return 2
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(spec["out"])
    det = Detector.load()
    runs = {}
    for c in spec["cases"]:
        losses = []

        def factory(total, losses=losses):
            def advance(k=1, **info):
                if "loss" in info:
                    losses.append(float(info["loss"]))
            return advance

        torch.manual_seed(0)
        sets = c["sets"] + (spec["working_sets"] if spec["side"] == "working" else [])
        art = run_erase("mini", spec["method"], [c["target"]], None, [], None, sets, out / c["id"], factory)
        secs = json.loads((Path(art) / "manifest.json").read_text())["cost"]["erase_seconds"]
        check = measure(load_model(str(art)), det, KINDS[c["target"]], GenSettings(), spec["n"])
        runs[c["id"]] = {"losses": losses, "seconds": round(secs, 2), "check": check}
        print(f"  {c['id']}: {secs:.0f} s, forget {check['forget_target_shown']:.2f}, retain "
              f"{check['retain_as_asked']:.2f}", file=sys.stderr, flush=True)
    (out / "runs.json").write_text(json.dumps(runs))
    return 0


def report(cases: list[dict], a: dict, b: dict, rev: str, working_sets: str = "") -> str:
    import numpy as np

    la = np.concatenate([a[c["id"]]["losses"] for c in cases])
    lb = np.concatenate([b[c["id"]]["losses"] for c in cases])
    lines = [f"Per-iteration loss, {len(cases)} runs x {len(la) // max(1, len(cases))} iterations per side", ""]
    lines += sample_comparison(la, lb, (f"before ({rev})", f"now (working tree{', ' + working_sets if working_sets else ''})"),
                               "iteration i of the same run on both sides")
    lines += ["", "| run | mean loss by quarter, before | now | forget shown (before / now) | "
              "retain as asked | erase s (before / now) |", "|---|---|---|---|---|---|"]
    for c in cases:
        ra, rb = a[c["id"]], b[c["id"]]
        qa = " / ".join(f"{q.mean():.2e}" for q in np.array_split(np.asarray(ra["losses"]), 4))
        qb = " / ".join(f"{q.mean():.2e}" for q in np.array_split(np.asarray(rb["losses"]), 4))
        ca, cb = ra["check"], rb["check"]
        lines.append(f"| {c['id']} | {qa} | {qb} | {ca['forget_target_shown']:.0%} / {cb['forget_target_shown']:.0%} "
                     f"(n={ca['n_forget']}) | {ca['retain_as_asked']:.0%} / {cb['retain_as_asked']:.0%} "
                     f"(n={ca['n_retain']}) | {ra['seconds']:.0f} / {rb['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", help="the revision before the change (required)")
    ap.add_argument("--method", default="esd", choices=sorted(SETTINGS))
    ap.add_argument("--working-sets", default="", help="comma-separated key=value options for the working side only")
    ap.add_argument("--targets", default="circle,striped")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--settings", default=None, help="comma-separated (default: all of the method's)")
    ap.add_argument("--iterations", type=int, default=None, help="override the iterations (default: the method's)")
    ap.add_argument("--n", type=int, default=24, help="forget and retain prompts of the check")
    ap.add_argument("--jobs", type=int, default=1, help="2: run the two sides at the same time")
    ap.add_argument("--json", type=Path, default=None, help="default out/bench/batched-<method>.json")
    ap.add_argument("--driver", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.driver:
        return drive(a.driver)
    if not a.rev:
        ap.error("--rev is required")
    cases = []
    for setting in (a.settings or ",".join(SETTINGS[a.method])).split(","):
        for target in a.targets.split(","):
            for seed in a.seeds.split(","):
                sets = SETTINGS[a.method][setting] + [f"seed={seed}"]
                if a.iterations:
                    sets.append(f"iterations={a.iterations}")
                cases.append({"id": f"{setting}-{target.replace(' ', '_')}-s{seed}", "target": target, "sets": sets})
    rev = resolve_rev(a.rev)
    if rev is None:
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="igmu-batched-"))
    with revision_tree(rev, tmp) as wt:
        def spec(side, src, out):
            return {"out": str(out), "src": str(src), "cases": cases, "n": a.n, "method": a.method, "side": side,
                    "working_sets": [x for x in a.working_sets.split(",") if x]}

        if not run_sides(__file__, tmp, wt, a.jobs, spec,
                         lambda side, src, _: f"{len(cases)} {a.method} runs with the {side} code ({src})"):
            return 1
        ra = json.loads((tmp / "revision" / "runs.json").read_text())
        rb = json.loads((tmp / "working" / "runs.json").read_text())
        path = a.json or ROOT / "out" / "bench" / f"batched-{a.method}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rev": rev, "method": a.method, "working_sets": a.working_sets, "cases": cases,
                                    "revision": ra, "working": rb}, indent=1))
        print(report(cases, ra, rb, rev, a.working_sets))
        return 0

if __name__ == "__main__":
    sys.exit(main())
