"""An attack run with a git revision's code and with the working tree's, on the cells of a finished bench: the
same records (success, final loss, iterations, adversarial prompt) and the seconds per prompt, side by side.

    python scripts/check_attack_sides.py --rev b9ffa1f --attack mma --bench OUT --labels uce,esd-x,sa --jobs 2

For each finished cell of OUT (a folder of `igmu bench`) with the given method labels whose results.json ran the
attack, both sides run `igmu attack` on the cell's artifact with the cell's own attacked (prompt, seed) pairs,
target, judge, concept kind and budget, at the cell's sampling settings (steps, guidance). Each side is one
process that runs the cells one after the other at one thread; with --jobs 2 the two sides run at the same
time, so their times are measured side by side under the same load. Prints:

  * per side: the attack success rate, the iterations and checks per prompt, and the CPU seconds per prompt
    (median and total; CPU time of each side's process, which a shared machine inflates less than wall time);
  * the final losses of the attacked prompts, compared as check_batched.py compares losses
    (revision_sides.sample_comparison: statistics per side, a Kolmogorov-Smirnov test, the paired relative
    difference);
  * paired by (cell, prompt, seed): how often the success, the iteration count and the adversarial prompt are
    the same.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revision_sides import resolve_rev, revision_tree, run_sides, sample_comparison  # noqa: E402


def bench_runs(bench: Path, attack: str, labels: list[str] | None, prompts: int | None) -> list[dict]:
    """One run per (cell, seed): the cell's artifact and the (prompt, seed) pairs its attack record holds."""
    runs = []
    for c in json.loads((bench / "bench.json").read_text())["cells"]:
        f = bench / "cells" / c["id"] / "results.json"
        if not f.is_file():
            continue
        r = json.loads(f.read_text())
        label = r["cell"]["method_label"]
        if labels and label not in labels:
            continue
        found = {k: v for k, v in ((r.get("aggregates") or {}).get("robustness") or {}).get("attacks", {}).items()
                 if k.split(":")[0] == attack}
        for key, a in found.items():
            pairs = [(p["prompt"], int(p["seed"])) for p in a["prompts"]][:prompts]
            for seed in sorted({s for _, s in pairs}):
                runs.append({"cell": c["id"], "label": label, "unlearned": str(bench / "cells" / c["id"] / "artifact"),
                             "original": r["original"], "target": r["task"]["targets"][0],
                             "judge": r["judge"]["spec"], "kind": (r["task"].get("category") or {}).get("kind"),
                             "budget": key.split(":")[1], "seed": seed,
                             "steps": r["settings"]["steps"], "guidance": r["settings"]["guidance"],
                             "prompts": [p for p, s in pairs if s == seed]})
    return runs


def driver(spec_file: str) -> int:
    """Run every `igmu attack` of the spec with this side's code (PYTHONPATH), one after the other."""
    spec = json.loads(Path(spec_file).read_text())
    out = Path(spec["out"])
    for i, run in enumerate(spec["runs"]):
        dest = out / f"run{i:03d}"
        if (dest / "results.json").is_file():
            continue
        cmd = [sys.executable, "-c", "from igmu.cli import main; main()", "attack", "--attack", spec["attack"],
               "--budget", run["budget"], "--unlearned", run["unlearned"], "--original", run["original"],
               "--target", run["target"], "--judge", run["judge"], "--seed", str(run["seed"]),
               "--steps", str(run["steps"]), "--guidance", str(run["guidance"]), "--threads", "1",
               "--out", str(dest)]
        if run["kind"]:
            cmd += ["--kind", run["kind"]]
        for p in run["prompts"]:
            cmd += ["--prompt", p]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            print(f"error: {spec['side']}: run {i} ({run['label']}) failed: {r.stderr.strip().splitlines()[-1:]}",
                  file=sys.stderr)
            return 1
        print(f"{spec['side']}: {i + 1}/{len(spec['runs'])} ({run['label']})", file=sys.stderr, flush=True)
    return 0


def records(out: Path, runs: list[dict]) -> dict[tuple, dict]:
    recs = {}
    for i, run in enumerate(runs):
        for p in json.loads((out / f"run{i:03d}" / "results.json").read_text())["records"]:
            recs[(run["label"], p["prompt"], int(p["seed"]))] = p
    return recs


def compare(a: dict[tuple, dict], b: dict[tuple, dict]) -> str:
    lines, keys = [], sorted(set(a) & set(b))
    attacked = [k for k in keys if not a[k]["success_no_attack"] and not b[k]["success_no_attack"]]
    if not attacked:
        return (f"{len(keys)} prompts, none attacked on both sides (the plain prompt already showed the target): "
                "nothing to compare; choose cells that erase the target (--labels)")
    for side, recs in (("revision", a), ("working", b)):
        rs = [recs[k] for k in keys]
        att = [recs[k] for k in attacked]
        cpu = [r["cpu_seconds"] for r in att]
        lines.append(f"{side:9s} ASR {sum(r['success'] for r in rs)}/{len(rs)}; attacked {len(att)}: "
                     f"iterations/prompt {statistics.mean(r['iterations'] for r in att):.2f}, "
                     f"checks/prompt {statistics.mean(r['checks'] for r in att):.2f}")
        lines.append(f"{'':9s} CPU s per attacked prompt: median {statistics.median(cpu):.2f}, "
                     f"min {min(cpu):.2f}, total {sum(cpu):.1f}")
    with_loss = [k for k in attacked if a[k].get("final_loss") is not None and b[k].get("final_loss") is not None]
    if with_loss:
        lines += ["", "Final loss of the attacked prompts:", ""]
        lines += sample_comparison([a[k]["final_loss"] for k in with_loss], [b[k]["final_loss"] for k in with_loss],
                                   ("revision", "working"), "the same cell, prompt and seed", column="code")
        lines.append("")
    else:
        lines.append("final loss: not recorded by this attack")
    same = lambda f: sum(a[k][f] == b[k][f] for k in attacked)  # noqa: E731
    lines.append(f"paired over {len(attacked)} attacked prompts: same success {same('success')}, "
                 f"same iterations {same('iterations')}, same adversarial prompt {same('adversarial_prompt')}")
    ca = sum(a[k]["cpu_seconds"] for k in attacked)
    cb = sum(b[k]["cpu_seconds"] for k in attacked)
    lines.append(f"CPU time over the attacked prompts: revision {ca:.1f} s, working {cb:.1f} s: "
                 f"{ca / cb:.2f}x")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", help="git revision of the 'before' side")
    ap.add_argument("--attack", default="mma")
    ap.add_argument("--bench", type=Path, help="a finished `igmu bench` output folder")
    ap.add_argument("--labels", help="comma-separated method labels (default: every cell)")
    ap.add_argument("--prompts", type=int, help="at most this many attacked prompts per cell (default: all)")
    ap.add_argument("--jobs", type=int, default=2, help="2: both sides at once (side-by-side times)")
    ap.add_argument("--keep", type=Path, help="keep the runs here (a rerun resumes them)")
    ap.add_argument("--driver", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.driver:
        return driver(a.driver)
    if not a.rev or not a.bench:
        print("error: give --rev REV and --bench OUT (a finished igmu bench folder)", file=sys.stderr)
        return 2
    if not (a.bench / "bench.json").is_file():
        print(f"error: {a.bench} is not a bench folder (no bench.json); give the --out of a finished igmu bench",
              file=sys.stderr)
        return 2
    rev = resolve_rev(a.rev)
    if rev is None:
        return 2
    labels = [x.strip() for x in a.labels.split(",")] if a.labels else None
    runs = bench_runs(a.bench, a.attack, labels, a.prompts)
    if not runs:
        print(f"error: no finished cell of {a.bench} ran attack {a.attack!r}"
              + (f" among labels {','.join(labels)}" if labels else ""), file=sys.stderr)
        return 2
    tmp = a.keep or Path(tempfile.mkdtemp(prefix="attack-sides-"))
    tmp.mkdir(parents=True, exist_ok=True)
    with revision_tree(rev, tmp, keep=a.keep is not None) as wt:
        ok = run_sides(__file__, tmp, wt, a.jobs,
                       lambda side, src, out: {"side": side, "attack": a.attack, "out": str(out), "runs": runs},
                       lambda side, src, spec: f"{side}: {len(runs)} runs of {a.attack} with {src}")
        if not ok:
            return 1
        print(f"{a.attack}, revision {rev} against the working tree, {len(runs)} runs "
              f"({len({r['label'] for r in runs})} cells) of {a.bench}:")
        print(compare(records(tmp / "revision", runs), records(tmp / "working", runs)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
