"""docs/calibration.md from a preset file (igmu calibrate) and, optionally, a bench folder run with that preset on
the TEST tasks (benchmarks/calibration-check.yaml): published defaults against calibrated values for every
method, the rungs walked with their figures on the calibration concepts, and forgetting / retain on the test
tasks with the 30% check; or (--transfer) a file with the rungs above the chosen ones on the test tasks
(scripts/calibration_transfer.py).

    python scripts/calibration_table.py presets/mini.yaml [--bench out/bench-calibration-check] [--out docs/calibration.md]
    python scripts/calibration_table.py presets/mini.yaml --transfer FOLDER --out docs/results/calibration-transfer.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

MARKER = "<!-- generated"
LIMIT = 0.30  # the check on the test tasks: forgetting <= 30% after calibration


def pct(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def ci(a) -> str:
    if not a or not a.get("n"):
        return "-"
    return f"{a['value']:.0%} ({a['lo']:.0%}-{a['hi']:.0%}, n={a['n']})"


def fmt_values(d: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()) or "-"


def method_rows(preset: dict) -> list[str]:
    concepts = preset["calibration"]["concepts"]
    head = ("| method | family | published (strength; cost) | calibrated (preset) | rung (x) | status | " +
            " | ".join(f"{c}: forget / retain" for c in concepts) + " |")
    out = [head, "|" + "---|" * (6 + len(concepts))]
    for label, e in preset["methods"].items():
        strength = [k for k in e["strength_knobs"]]
        pub_s = {k: e["published"][k] for k in strength}
        pub_c = {k: e["published"][k] for k in e["cost_knobs"] if k in e["set"]}
        row = next(r for r in e["rungs"] if r["rung"] == e["rung"])
        figs = []
        for c in concepts:
            res = row["concepts"][c]
            figs.append(f"{pct(res['forgetting'])} / {pct(res.get('retain'))}" if isinstance(res, dict) else "-")
        status = {"reached": "reached <= 20%", "best-tradeoff": "**not reached**: best trade-off",
                  "no-knob": "no strength knob"}[e["status"]]
        out.append(f"| {label} | {e['family']} | {fmt_values(pub_s) or '-'}; {fmt_values(pub_c)} | "
                   f"{fmt_values(e['set'])} | {e['rung']} (x{e['multiplier']:g}) | {status} | " + " | ".join(figs) + " |")
    return out


def rung_rows(preset: dict) -> list[str]:
    concepts = preset["calibration"]["concepts"]
    out = ["| method | rung | strength | " + " | ".join(f"{c}: forget / retain" for c in concepts) + " | passed |",
           "|" + "---|" * (4 + len(concepts))]
    for label, e in preset["methods"].items():
        for r in e["rungs"]:
            cells = []
            for c in concepts:
                res = r["concepts"][c]
                cells.append(f"{pct(res['forgetting'])} / {pct(res.get('retain'))}" if isinstance(res, dict)
                             else "not measured")
            mark = " (chosen)" if r["rung"] == e["rung"] else ""
            out.append(f"| {label} | {r['rung']}{mark} | {fmt_values(r['values'])} | " + " | ".join(cells) +
                       f" | {'yes' if r['passed'] else 'no'} |")
    return out


def test_rows(bench_dir: Path, show_set: bool = False) -> tuple[list[str], list[str]]:
    """The test-task table of a bench folder; `show_set`: each label followed by its entry's `set` options (the
    transfer diagnostic's rung values)."""
    bench = json.loads((bench_dir / "bench.json").read_text())
    by: dict = {}
    tasks: list[str] = []
    sets: dict = {}
    for c in bench["cells"]:
        sets[c["method_label"]] = c.get("set") or {}
        f = bench_dir / "cells" / c["id"] / "results.json"
        if c["task"] not in tasks:
            tasks.append(c["task"])
        if f.is_file():
            by[(c["method_label"], c["task"])] = json.loads(f.read_text())
    labels = list(dict.fromkeys(c["method_label"] for c in bench["cells"]))
    checked = any(t.startswith(("object", "style")) for t in tasks)  # the check needs an object or style task
    out = ["| method | " + " | ".join(f"{t}: forget (before -> after) / retain (before -> after)" for t in tasks) +
           (" | <= 30% on object and style |" if checked else " |"), "|" + "---|" * (1 + len(tasks) + checked)]
    misses = []
    for m in labels:
        cells, ok = [], True
        for t in tasks:
            r = by.get((m, t))
            if r is None:
                cells.append("not run")
                ok = ok and not (t.startswith("object") or t.startswith("style"))
                continue
            fo, pr = r["aggregates"]["forgetting"], r["aggregates"]["preservation"]
            kept = f", carrier kept {pct(pr['carrier_kept']['value'])}" if "carrier_kept" in pr else ""
            cells.append(f"{pct(fo['target_shown_original']['value'])} -> {ci(fo['target_shown'])} / "
                         f"{pct(pr['as_expected_original']['value'])} -> {pct(pr['as_expected']['value'])}{kept}")
            if (t.startswith("object") or t.startswith("style")) and fo["target_shown"]["value"] > LIMIT + 1e-12:
                ok = False
        weights = any(r.get("cost", {}).get("params_changed", 0) > 0 for (mm, _), r in by.items() if mm == m)
        verdict = "yes" if ok else ("**no**" if weights else "no (inference-time)")
        if not ok and checked:
            misses.append(m)
        name = f"{m} ({fmt_values(sets[m])})" if show_set else m
        out.append(f"| {name} | " + " | ".join(cells) + (f" | {verdict} |" if checked else " |"))
    ev = bench["config"]["evaluation"]
    out.append("")
    for t in tasks:  # per task: how many of the entries run reach the 30% line
        shown = [r["aggregates"]["forgetting"]["target_shown"]["value"] for (m, tt), r in by.items() if tt == t]
        if shown:
            out.append(f"{t}: forgetting <= {LIMIT:.0%} for {sum(x <= LIMIT + 1e-12 for x in shown)} of "
                       f"{len(shown)} entries run.")
    out.append("")
    per = (f"{ev['images_per_prompt']} image(s) per prompt" if ev.get("images_per_prompt") else
           f"images per prompt raised to >= {ev.get('min_forget_images')} forget and >= "
           f"{ev.get('min_retain_images')} retain images per group")
    out.append(f"(bench `{bench['name']}`: {per}, "
               f"{ev.get('steps')} sampler steps, guidance {ev.get('guidance')}; 95% bootstrap intervals; "
               f"n = forget images)")
    return out, misses


def transfer_section(bench_dir: Path) -> list[str]:
    rows, misses = test_rows(bench_dir, show_set=True)
    return ["## Above the chosen rung, on the test tasks: the transfer diagnostic (generated)", "",
            "Entries that reached 20% on the calibration concepts but missed the check on a test task, erased at "
            "every ladder rung above the chosen one (`scripts/calibration_transfer.py`, "
            "`benchmarks/calibration-transfer.yaml`; label `-rN` = rung N). Reported only: the preset does not "
            "change from these figures.", "", *rows, "",
            "Rungs that miss the check: " + (", ".join(misses) if misses else "none") + "."]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--bench", default=None, help="bench folder run with the preset on the test tasks")
    ap.add_argument("--out", default="docs/calibration.md")
    ap.add_argument("--transfer", default=None,
                    help="write only the table of this bench folder of benchmarks/calibration-transfer.yaml (rungs "
                         "above the chosen ones) to --out")
    ap.add_argument("--tests-only", action="store_true",
                    help="write only the test-task table of --bench (a run of some test tasks) to --out")
    a = ap.parse_args()
    preset = yaml.safe_load(Path(a.preset).read_text())
    if a.transfer:
        Path(a.out).write_text("\n".join([
            f"# The calibration transfer diagnostic (generated by scripts/calibration_table.py from {a.preset} and "
            f"{a.transfer}; do not edit)", "", *transfer_section(Path(a.transfer))]) + "\n")
        print(f"wrote {a.out}")
        return
    if a.tests_only:
        if not a.bench:
            ap.error("--tests-only needs --bench")
        rows, misses = test_rows(Path(a.bench))
        name = json.loads((Path(a.bench) / "bench.json").read_text())["name"]
        Path(a.out).write_text("\n".join([
            f"# The preset on the tasks of bench `{name}` (generated by scripts/calibration_table.py from {a.preset} "
            f"and {a.bench}; do not edit)", "",
            "Every method erased each task's target with `--preset` (calibrated on the calibration concepts only; "
            "nothing was tuned on these tasks' concepts), then forgetting and preservation were measured as in "
            "`igmu evaluate`.", "", *rows,
            *(["", "Methods that miss the check: " + (", ".join(misses) or "none") + "."] if misses else [])]) + "\n")
        print(f"wrote {a.out}")
        return
    cal = preset["calibration"]
    old = Path(a.out).read_text() if Path(a.out).is_file() else "# Calibration\n"
    lines = [old.split(MARKER)[0].rstrip() + "\n"]  # the hand-written part above the marker is kept
    lines += [MARKER + " by scripts/calibration_table.py from " + a.preset +
              (f" and {a.bench}" if a.bench else "") + "; do not edit below -->", "",
              f"## Preset `{a.preset}` (generated)", "",
              f"Model `{preset['model']}` (fingerprint `{preset['model_fingerprint'][:16]}`), rule "
              f"`{preset['rule']['name']}`, budget `{preset['rule']['budget']['name']}` "
              f"({fmt_values(preset['rule']['budget']['caps'])}), created {preset['created']}, igmu "
              f"{preset['igmu_version']}.", "",
              "Calibration concepts and their held-out prompts: " + "; ".join(
                  f"{c} (task {t['name']}, {t['forget_prompts']} forget prompts, {t['retain_prompts']} retain "
                  f"prompts, judge {t['judge']})" for c, t in cal["tasks"].items()) +
              f"; {cal['images_per_prompt']} image per prompt"
              + (f", first {cal['max_prompts']} prompts of each set" if cal.get("max_prompts") else "") + ".",
              "Test concepts excluded (bench config " + str(cal["test_concepts_excluded"].get("bench_config")) +
              "): " + (", ".join(cal["test_concepts_excluded"].get("concepts") or []) or "none checked") + ".", "",
              "### Published defaults against calibrated values", "",
              "`published`: the method's defaults (cited in its file): strength knobs; cost knobs the budget "
              "caps. `calibrated`: the preset's `set`. Figures: the chosen rung on the calibration concepts "
              "(forgetting = share of held-out forget images still showing the concept; retain = share of "
              "retain images drawn as asked).", ""]
    lines += method_rows(preset)
    if a.bench:
        rows, misses = test_rows(Path(a.bench))
        lines += ["", "### On the test tasks, with the preset (generated)", "",
                  "Every method erased each TEST task's target with `--preset` (nothing was tuned on these "
                  "concepts), then forgetting and preservation were measured as in `igmu evaluate`. The check: "
                  f"forgetting <= {LIMIT:.0%} on the object and style tasks.", ""]
        lines += rows
        lines += ["", "Methods that miss the check: " + (", ".join(misses) if misses else "none") + "."]
    lines += ["", "### Every rung walked (generated)", ""]
    lines += rung_rows(preset)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
