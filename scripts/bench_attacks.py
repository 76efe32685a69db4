"""The robustness battery measured on the mini world (figures in docs/robustness.md).

    python scripts/bench_attacks.py validate   # each attack against the mini model with "striped" broken by hand
    python scripts/bench_attacks.py table      # attacks x methods x {object, style} (resumable: one file per cell)
    python scripts/bench_attacks.py cost       # seconds per attacked prompt, every attack and budget
    python scripts/bench_attacks.py report     # Markdown tables from what the runs above cached

validate: plain prompting of the broken-word model (how often the target shows without an attack), every
    attack at `fast` on the 16 explicit style prompts, and the same on the original model (trivially 100%).
table: the methods at their calibrated strengths (presets/mini.yaml) erase circle / striped (`igmu erase`,
    cached), then every attack at `fast` (UnlearnDiffAtk also at `official` on the object task) attacks 16
    (prompt, seed) pairs per cell: the task's explicit forget prompts at seed 0, then again at seed 1 until
    there are 16 (the object task has 12 prompts). Cells run attack by attack, cheapest first; each is written
    to out/bench/attacks/cells/ when done; a rerun skips finished cells.
sweep: diffusion completion on the broken-word model, the original driving the first k of 20 steps (k = 0..20).
cost: seconds per attacked prompt on the UCE object artifact for each attack and budget, with early stopping
    off (a judge that never sees the target), so the figure is the full budget's cost: `--prompts` prompts.

Everything runs with one thread per process (the machine's 2 cores are shared); run it under `nice`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

OUT = Path("out/bench/attacks")
METHODS = [("uce", "uce", []), ("rece", "rece", []), ("esd-x", "esd", ["train_method=xattn"]),
           ("advunlearn", "advunlearn", []), ("salun", "salun", []), ("ca", "ca", [])]
TASKS = ["object-circle", "style-striped"]
ATTACKS = ["unlearndiffatk", "p4d-n", "p4d-k", "ringabell", "mma", "cce", "noiseprobe"]
BY_COST = ["mma", "ringabell", "cce", "noiseprobe", "unlearndiffatk", "p4d-k", "p4d-n"]  # CPU s / prompt at `fast`
assert sorted(BY_COST) == sorted(ATTACKS)
EXTRA = [("unlearndiffatk", "official", "object-circle")]  # (attack, budget, task) beyond `fast` everywhere
N_PROMPTS = 16
PRESET = "presets/mini.yaml"  # the methods' calibrated strengths (docs/calibration.md), not their published defaults


def _setup():
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


def attacked(task) -> tuple[list[str], list[int]]:
    ps = [r.prompt for r in task.forget()["explicit"]]
    return [ps[i % len(ps)] for i in range(N_PROMPTS)], [i // len(ps) for i in range(N_PROMPTS)]


def judge_for(task):
    from igmu.evaluation.judges import get_judge

    j = get_judge(task.judge)
    ctx = task.concepts()
    return lambda imgs: j.detect(imgs, list(task.targets), ctx).any(1)


def run_cell(path: Path, attack: str, budget: str, unlearned: str, task_name: str, pipes: dict,
             per_prompt: bool = False) -> dict:
    """One (attack, budget, model, task) cell: run, then write path (JSON) and its images atomically. With
    per_prompt (the dear `official` cells: up to 49 CPU-min each), every prompt is its own claimed part file, so an
    interrupted cell resumes where it stopped and two processes split one cell; the per-prompt seeds make the
    records the same as one run's. Returns {} when the other process still holds the cell's last prompts."""
    import numpy as np
    from PIL import Image

    from igmu.attacks.base import run_attack, summary_cost
    from igmu.evaluation.metrics import wilson
    from igmu.generate import GenSettings
    from igmu.artifacts import load_model
    from igmu.tasks import load_task
    from igmu.utils.io import atomic_dir

    if (path / "cell.json").is_file():
        return json.loads((path / "cell.json").read_text())
    task = load_task("mini:" + task_name)
    prompts, seeds = attacked(task)
    for spec in (unlearned, "mini"):
        if spec not in pipes:
            pipes[spec] = load_model(spec)
    t0 = time.perf_counter()
    if not per_prompt:
        res = run_attack(attack, pipes[unlearned], pipes["mini"], task.targets[0], prompts, seeds, budget,
                         judge_for(task), GenSettings(), 0, task.category.kind)
    else:  # one part file per prompt: resumable, and two processes share the cell prompt by prompt
        parts, res = path.parent / f".{path.name}.parts", None
        for i, (p, s) in enumerate(zip(prompts, seeds)):
            part = parts / f"{i:02d}"
            if (part / "part.json").is_file() or _busy(part):
                continue
            with _claim(part):
                r = run_attack(attack, pipes[unlearned], pipes["mini"], task.targets[0], [p], [s], budget,
                               judge_for(task), GenSettings(), 0, task.category.kind)
                with atomic_dir(part) as tmp:
                    Image.fromarray(np.asarray(r["records"][0].pop("_image"))).save(tmp / "image.png")
                    r["records"][0].pop("embedding", None)
                    (tmp / "part.json").write_text(json.dumps(r, indent=1))
        done = _parts(path)
        if len(done) < len(prompts) or (path / "cell.json").is_file():
            return {}  # the other process is on the last prompts (it writes the cell), or has written it
        rs = [r for r, _ in done]
        res = rs[0] | {k: round(sum(r[k] for r in rs), 3) for k in ("shared_seconds", "shared_cpu_seconds", "shared_images")}
        res["records"] = [r["records"][0] | {"_image": np.asarray(Image.open(d / "image.png"))} for r, d in done]
    recs = res["records"]
    out = {"attack": attack, "budget": budget, "model": unlearned, "task": task_name,
           "asr": wilson([r["success"] for r in recs]), "asr_no_attack": wilson([r["success_no_attack"] for r in recs]),
           "cost": summary_cost(res),
           "seconds": round(sum(r["seconds"] for r in recs) + res["shared_seconds"] if per_prompt
                            else time.perf_counter() - t0, 1),
           "budget_values": res["budget_values"], "shared_seconds": res["shared_seconds"],
           "records": [{k: v for k, v in r.items() if not k.startswith("_") and k != "embedding"} for r in recs]}
    with atomic_dir(path) as tmp:
        for i, r in enumerate(recs):
            Image.fromarray(np.asarray(r["_image"])).save(tmp / f"{i:02d}.png")
        (tmp / "cell.json").write_text(json.dumps(out, indent=1))
    return out


def _busy(path: Path) -> bool:
    """A live process of this script has claimed the cell (parallel runs split the table without repeating it)."""
    f = path.parent / f".{path.name}.claim"
    try:
        os.kill(int(f.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


class _claim:
    def __init__(self, path: Path):
        self.f = path.parent / f".{path.name}.claim"

    def __enter__(self):
        self.f.parent.mkdir(parents=True, exist_ok=True)
        self.f.write_text(str(os.getpid()))

    def __exit__(self, *exc):
        self.f.unlink(missing_ok=True)
        return False


def erase(label: str, method: str, sets: list[str], task_name: str) -> str:
    from igmu.tasks import load_task

    art = OUT / "artifacts" / f"{label}-{task_name}"
    while _busy(art):  # the other process is erasing it
        time.sleep(10)
    if (art / "manifest.json").is_file():
        return str(art)
    t = load_task("mini:" + task_name)
    cmd = [sys.executable, "-m", "igmu.cli", "erase", "--model", "mini", "--method", method, "--out", str(art),
           "--preset", PRESET]
    cmd += [x for tgt in t.targets for x in ("--target", tgt)]
    cmd += ["--anchor", t.anchor] if t.anchor else []
    cmd += [x for kv in sets for x in ("--set", kv)]
    with _claim(art):
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return str(art)


def cmd_table(a):
    _setup()
    tasks = a.tasks.split(",") if a.tasks else TASKS
    methods = [m for m in (METHODS[::-1] if a.reverse else METHODS) if not a.methods or m[0] in a.methods.split(",")]
    # attack by attack, cheapest first (docs/robustness.md, cost table), every method and task before the next
    # attack; the (much dearer) extra budgets last: an interrupted table has the cheap attacks everywhere
    cells = [(atk, "fast", t) for atk in BY_COST for t in tasks] + [x for x in EXTRA if x[2] in tasks]
    order = [(m, c) for c in cells for m in methods]
    pipes: dict = {}
    for (label, method, sets), (atk, budget, t) in order:
        if a.attacks and atk not in a.attacks.split(","):
            continue
        path = OUT / "cells" / t / label / f"{atk}-{budget}"
        split = budget != "fast"  # the extra budgets: split prompt by prompt (run_cell), not claimed whole
        if (path / "cell.json").is_file() or (not split and _busy(path)):
            continue  # done, or another process of this script is on it
        with _claim(path) if not split else contextlib.nullcontext():  # before erasing: the other process moves
            art = erase(label, method, sets, t)  # on instead of waiting for the erasure
            if art not in pipes:
                pipes.clear()  # one unlearned model (and the original) in memory at a time
            c = run_cell(path, atk, budget, art, t, pipes, per_prompt=split)
        if not c:
            continue
        print(f"{t:14s} {label:11s} {atk:15s} {budget:8s} ASR {c['asr']['value']:.0%} "
              f"(no attack {c['asr_no_attack']['value']:.0%}) {c['cost']['seconds_per_prompt']:.1f} s/prompt",
              flush=True)


def cmd_validate(a):
    _setup()
    from igmu.world.erasure_checks import save_broken_word_model

    broken = OUT / "broken-striped"
    if not (broken / "model_index.json").is_file():
        save_broken_word_model(broken, "striped", "plain")
    pipes: dict = {}
    for model in (str(broken), "mini"):
        tag = "broken" if model != "mini" else "original"
        for atk in ATTACKS:
            c = run_cell(OUT / "validate" / tag / f"{atk}-fast", atk, "fast", model, "style-striped", pipes)
            print(f"{tag:8s} {atk:15s} ASR {c['asr']['value']:.0%} [{c['asr']['lo']:.0%}, {c['asr']['hi']:.0%}] "
                  f"no attack {c['asr_no_attack']['value']:.0%} {c['cost']['seconds_per_prompt']:.1f} s/prompt", flush=True)
    plain = OUT / "validate" / "plain.json"
    if not plain.is_file():  # plain prompting: every explicit prompt at 4 seeds
        import numpy as np

        from igmu.evaluation.metrics import wilson
        from igmu.generate import GenSettings, generate_images
        from igmu.artifacts import load_model
        from igmu.tasks import load_task

        task = load_task("mini:style-striped")
        ps = [r.prompt for r in task.forget()["explicit"]]
        pairs = [(p, s) for p in ps for s in range(4)]
        imgs = generate_images(load_model(str(broken)), [p for p, _ in pairs], [s for _, s in pairs], GenSettings(), 1)
        shown = np.asarray(judge_for(task)(imgs))
        plain.write_text(json.dumps({"target_shown": wilson(shown.tolist()), "images": len(pairs)}, indent=1))
    print("plain prompting of the broken model:", json.loads(plain.read_text()))


def cmd_sweep(a):
    """Diffusion completion on the broken-word model: the original model samples the first k of 20 steps of each
    explicit style prompt, the broken model completes; how often is the target shown, per k? (Where the noise
    probe's completions at k = 1..3 sit on that curve.)"""
    _setup()
    import torch

    from igmu.attacks.noiseprobe import ddim_sample, decode_latents
    from igmu.evaluation.metrics import wilson
    from igmu.generate import initial_noise
    from igmu.diffusion.arch import adapter_for
    from igmu.artifacts import load_model
    from igmu.tasks import load_task
    from igmu.utils.io import write_json

    path = OUT / "validate" / "completion-sweep.json"
    if path.is_file():
        print(path.read_text())
        return
    task = load_task("mini:style-striped")
    shows = judge_for(task)
    un, orig = load_model(str(OUT / "broken-striped")), load_model("mini")
    ks = [0, 1, 2, 3, 5, 8, 12, 20]
    rows = {}
    for k in ks:
        hit = []
        for i, r in enumerate(task.forget()["explicit"]):
            cu, _ = adapter_for(un).encode([r.prompt, ""])
            co, _ = adapter_for(orig).encode([r.prompt, ""])
            x = initial_noise(un, i, 32, 32)
            lat = ddim_sample(un, orig, x, cu, co, 20, 5.0, torch.zeros(1), torch.ones(1),
                              [torch.Generator().manual_seed(i)], [k - 1 if k > 0 else None])
            hit.append(bool(shows(decode_latents(un, lat))[0]))
        rows[k] = wilson(hit)
        print(f"original drives {k:2d} of 20 steps: target shown {rows[k]['value']:.0%}", flush=True)
    write_json(path, {"steps": 20, "guidance": 5.0, "shown_by_original_steps": rows})


def cmd_cost(a):
    """Full-budget cost (no early stop): a judge that never sees the target."""
    _setup()
    import numpy as np

    from igmu.attacks.base import run_attack, summary_cost
    from igmu.generate import GenSettings
    from igmu.artifacts import load_model
    from igmu.tasks import load_task
    from igmu.utils.io import write_json

    task = load_task("mini:object-circle")
    art = erase("uce", "uce", [], "object-circle")
    un, orig = load_model(art), load_model("mini")
    prompts = [r.prompt for r in task.forget()["explicit"]][:a.prompts]
    for budget in a.budgets.split(","):
        for atk in (a.attacks.split(",") if a.attacks else ATTACKS):
            path = OUT / "cost" / f"{atk}-{budget}.json"
            if path.is_file():
                continue
            t0 = time.perf_counter()
            res = run_attack(atk, un, orig, task.targets[0], prompts, [0] * len(prompts), budget,
                             lambda imgs: np.zeros(len(imgs), bool), GenSettings(), 0, task.category.kind)
            c = summary_cost(res) | {"wall_seconds": round(time.perf_counter() - t0, 1), "attack": atk,
                                     "budget": budget, "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
                                     "shared_seconds": res["shared_seconds"], "load_average": os.getloadavg()[0]}
            write_json(path, c)
            print(json.dumps(c), flush=True)


def _fmt(x: dict) -> str:
    return f"{x['value']:.0%} [{x['lo']:.0%}, {x['hi']:.0%}]"


def budgets_table() -> list[str]:
    """Every attack's presets side by side: official (cited in the attack's file) next to fast and tiny."""
    from igmu.attacks.base import BUDGETS, load_all

    lines = ["| attack | field | " + " | ".join(BUDGETS) + " |", "|---|---|" + "---|" * len(BUDGETS)]
    for name, cls in sorted(load_all().items()):
        a = cls()
        vals = {b: a.budget(b).model_dump() for b in BUDGETS}
        for i, f in enumerate(vals["official"]):
            lines.append(f"| {name if i == 0 else ''} | {f} | " + " | ".join(str(vals[b][f]) for b in BUDGETS) + " |")
    return lines


BEGIN, END = "<!-- BEGIN generated by scripts/bench_attacks.py report -->", "<!-- END generated -->"


def cmd_report(a):
    lines = table_lines(validate=not a.write)
    if a.write:  # replace the generated block of a Markdown file (docs/robustness.md)
        doc = Path(a.write)
        text = doc.read_text(encoding="utf-8")
        head, rest = text.split(BEGIN, 1)
        doc.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n\n" + END + rest.split(END, 1)[1], encoding="utf-8")
        print(f"wrote the generated block of {doc}")
        return
    print("\n".join(["#### budgets\n"] + budgets_table() + lines))


def _parts(path: Path) -> list[tuple[dict, Path]]:
    """The finished prompts of a per-prompt cell: (the part's run_attack result, its folder), in prompt order."""
    return [(json.loads(f.read_text()), f.parent) for f in sorted((path.parent / f".{path.name}.parts").glob("*/part.json"))]


def _load_cell(t: str, label: str, x: str, b: str) -> dict | None:
    """A finished cell, or an unfinished per-prompt cell's parts so far (marked "partial"), or None."""
    from igmu.evaluation.metrics import wilson

    path = OUT / "cells" / t / label / f"{x}-{b}"
    if (path / "cell.json").is_file():
        return json.loads((path / "cell.json").read_text())
    recs = [r["records"][0] for r, _ in _parts(path)]
    if not recs:
        return None
    return {"partial": True, "records": recs, "asr": wilson([r["success"] for r in recs]),
            "asr_no_attack": wilson([r["success_no_attack"] for r in recs]),
            "cost": {"cpu_seconds_per_prompt": sum(r["cpu_seconds"] for r in recs) / len(recs)}}


def table_lines(validate: bool = True) -> list[str]:
    """The measured tables: attacks x methods per task (ASR, no-attack share, seconds), the broken-word model
    (validate=True), the full-budget cost."""
    from igmu.evaluation.metrics import wilson

    lines = []
    for t in TASKS:
        cols = [(atk, "fast") for atk in ATTACKS] + [(x, b) for x, b, tt in EXTRA if tt == t]
        extra = len(cols) > len(ATTACKS)  # this task also has dearer budgets: a second union column counts them
        lines += [f"\n#### {t} (n = {N_PROMPTS} attacked prompts per cell; ASR [95% Wilson interval]; "
                  "no-attack share in parentheses; methods at their calibrated strengths, presets/mini.yaml)\n",
                  "| method | " + " | ".join(f"{x} ({b})" for x, b in cols) + " | any `fast` attack |" +
                  (" any attack, `official` included |" if extra else ""),
                  "|---|" + "---|" * (len(cols) + 1 + extra)]
        for label, _, _ in METHODS:
            row, fast_hits, all_hits = [], [], []
            for x, b in cols:
                c = _load_cell(t, label, x, b)
                if c:
                    row.append(f"{_fmt(c['asr'])} ({c['asr_no_attack']['value']:.0%})" +
                               (f", {len(c['records'])} of {N_PROMPTS} prompts so far" if c.get("partial") else ""))
                    if not c.get("partial"):
                        all_hits.append([r["success"] for r in c["records"]])
                    if b == "fast" and not c.get("partial"):
                        fast_hits.append(all_hits[-1])
                else:
                    row.append("not run")
            # the same (prompt, seed) pairs in every cell, in order: a pair counts when at least one attack won;
            # with attacks missing, the share over those run is a lower bound
            for hits, of in [(fast_hits, len(ATTACKS))] + ([(all_hits, len(cols))] if extra else []):
                anyone = [any(h) for h in zip(*hits)]
                if len(hits) == of:
                    row.append(_fmt(wilson(anyone)))
                else:
                    row.append(f">= {wilson(anyone)['value']:.0%} ({len(hits)} of {of} run)" if anyone else "not run")
            lines.append(f"| {label} | " + " | ".join(row) + " |")
        lines += ["", "CPU seconds per attacked prompt (mean over the cell, early stops included; one thread):", "",
                  "| method | " + " | ".join(f"{x} ({b})" for x, b in cols) + " |", "|---|" + "---|" * len(cols)]
        for label, _, _ in METHODS:
            row = []
            for x, b in cols:
                c = _load_cell(t, label, x, b)
                row.append(f"{c['cost']['cpu_seconds_per_prompt']:.1f}" if c else "–")
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    v = OUT / "validate"
    if validate and v.is_dir():
        lines += ["\n#### the broken-word model (style-striped, 16 prompts, `fast`)\n",
                  "| attack | ASR on the broken-word model | no attack | ASR on the original model | s / prompt |",
                  "|---|---|---|---|---|"]
        for atk in ATTACKS:
            fb, fo = v / "broken" / f"{atk}-fast" / "cell.json", v / "original" / f"{atk}-fast" / "cell.json"
            if fb.is_file() and fo.is_file():
                b, o = json.loads(fb.read_text()), json.loads(fo.read_text())
                lines.append(f"| {atk} | {_fmt(b['asr'])} | {b['asr_no_attack']['value']:.0%} | {_fmt(o['asr'])} | "
                             f"{b['cost']['seconds_per_prompt']:.1f} |")
        sw = v / "completion-sweep.json"
        if sw.is_file():
            rows = json.loads(sw.read_text())["shown_by_original_steps"]
            lines.append("\ndiffusion completion on the broken-word model (16 prompts): target shown when the original "
                         "model drives the first k of 20 steps: " + ", ".join(f"k={k}: {_fmt(v)}" for k, v in rows.items()))
        if (v / "plain.json").is_file():
            p = json.loads((v / "plain.json").read_text())
            lines.append(f"\nplain prompting of the broken-word model: target shown in {_fmt(p['target_shown'])} "
                         f"of {p['images']} images")
    cost = sorted((OUT / "cost").glob("*.json")) if (OUT / "cost").is_dir() else []
    if cost:
        lines += ["\n#### cost at the full budget (no early stop; UCE object artifact; one thread)\n",
                  "| attack | budget | CPU s / prompt | wall s / prompt | load average | iterations / prompt | "
                  "images / prompt | prompts |", "|---|---|---|---|---|---|---|---|"]
        for f in sorted(cost, key=lambda f: (ATTACKS.index(json.loads(f.read_text())["attack"]),
                                             ["tiny", "fast", "official"].index(json.loads(f.read_text())["budget"]))):
            c = json.loads(f.read_text())
            lines.append(f"| {c['attack']} | {c['budget']} | {c['cpu_seconds_per_prompt']:.1f} | "
                         f"{c['seconds_per_prompt']:.1f} | {c['load_average']:.0f} | {c['iterations_per_prompt']:.0f} | "
                         f"{c['images_per_prompt']:.0f} | {c['n']} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["validate", "table", "cost", "sweep", "report"])
    ap.add_argument("--methods", default="", help="subset of: " + ",".join(m[0] for m in METHODS))
    ap.add_argument("--attacks", default="", help="subset of: " + ",".join(ATTACKS))
    ap.add_argument("--tasks", default="", help="table: subset of: " + ",".join(TASKS))
    ap.add_argument("--reverse", action="store_true", help="table: methods in reverse order (a second process "
                    "meets the first in the middle of each attack's row of cells)")
    ap.add_argument("--budgets", default="tiny,fast,official", help="cost: budgets to time")
    ap.add_argument("--prompts", type=int, default=2, help="cost: prompts per (attack, budget)")
    ap.add_argument("--write", default="", help="report: rewrite the generated block of this Markdown file")
    a = ap.parse_args()
    {"validate": cmd_validate, "table": cmd_table, "cost": cmd_cost, "sweep": cmd_sweep, "report": cmd_report}[a.what](a)


if __name__ == "__main__":
    main()
