"""The report's generated sections: findings (the paper's two findings counted on a run), the seed-to-seed spread,
and sequential tasks scored after every step (a real chained run on the mini model)."""
import json
from pathlib import Path

import yaml

from igmu.report.bench_report import Bench, Cell, compute_findings, findings_lines, render_markdown, seed_spread
from igmu.tasks import load_task, task_to_yaml

from cli_helpers import run

ROOT = Path(__file__).parents[1]


def _agg(v, half=0.05, n=16):
    return {"value": v, "lo": max(v - half, 0.0), "hi": min(v + half, 1.0), "n": n}


def _cell(label, task, seed, forget, retain, asr, fid=1.0):
    res = {"aggregates": {"forgetting": {"target_shown": _agg(forget), "target_shown_original": _agg(0.9)},
                          "preservation": {"as_expected": _agg(retain), "as_expected_original": _agg(0.95)},
                          "quality": {"retain": {"fid": _agg(fid, 0.1)}},
                          "robustness": {"attacks": {"unlearndiffatk:fast": {"asr": _agg(asr, 0.2, 8)}}}},
           "aspects": ["forgetting", "preservation", "quality", "robustness"]}
    return Cell(f"{label}{task}{seed}", label, label, task, seed, {}, "finished", res)


def test_findings_count_what_the_results_say():
    cells = [_cell("a", "t1", 0, 0.1, 0.9, 0.2), _cell("a", "t2", 0, 0.1, 0.7, 0.4),  # retain 80%: not below
             _cell("b", "t1", 0, 0.5, 0.5, 0.9), _cell("b", "t2", 0, 0.5, 0.6, 0.7),
             _cell("c", "t1", 0, 0.0, 0.3, 0.55), _cell("c", "t2", 0, 0.0, 0.4, 0.45)]
    f = compute_findings(Bench(Path("."), {}, cells))
    assert f["methods"] == 3 and f["below_retain"] == ["c", "b"] and f["above_asr"] == ["b"]
    assert abs(f["retain"]["a"] - 0.8) < 1e-12 and abs(f["asr"]["c"] - 0.5) < 1e-12  # at the bar: not counted
    sep = {s["aspect"]: s for s in f["separation"]}
    # per task: pairs (a,b), (a,c), (b,c); forgetting intervals +-0.05: a [0.05, 0.15] and c [0, 0.05] touch
    assert sep["forgetting"]["pairs"] == 6 and sep["forgetting"]["separated"] == 4
    assert sep["quality"]["separated"] == 0 and sep["quality"]["score_spread"] == 0.0  # same FID everywhere
    assert sep["alignment"]["pairs"] == 0
    text = findings_lines(f)
    assert text[0].startswith("Preservation: 2 of 3 methods fall below 80% retain") and "reproduced on this run" in text[0]
    assert text[1].startswith("Robustness: 1 of 3 methods exceed 50%") and "not reproduced on this run" in text[1]
    assert "forgetting 4 of 6 (67%)" in text[2]
    md = render_markdown(Bench(Path("."), {"name": "x"}, cells))
    assert "## Findings" in md and "2 of 3 methods fall below 80% retain" in md


def test_seed_spread_over_seeds():
    cells = [_cell("a", "t", s, f, 0.9, 0.25) for s, f in ((0, 0.1), (1, 0.2), (2, 0.3))] + \
        [_cell("b", "t", 0, 0.5, 0.5, 0.5)]
    head, rows = seed_spread(cells)
    assert head[:3] == ["method", "seeds", "forgetting: target shown"] and head[-1] == "robustness: ASR unlearndiffatk:fast"
    assert rows == [["a", "3", "20.0% ± 10.0% (10.0%–30.0%)", "90.0% ± 0.0% (90.0%–90.0%)", "1 ± 0 (1–1)", "–",
                     "25.0% ± 0.0% (25.0%–25.0%)"]]  # b has one seed: no spread
    assert seed_spread(cells[3:]) == ([], [])
    md = render_markdown(Bench(Path("."), {"name": "x"}, cells))
    assert "Seed-to-seed spread" in md and "20.0% ± 10.0%" in md


def test_sequential_task_is_scored_after_every_step(tmp_path):
    t = load_task(str(ROOT / "tasks" / "mini" / "sequential-striped-dotted.yaml"))
    ex = t.forget()["explicit"]
    t.prompts = {"forget": {"explicit": [r for r in ex if "striped" in r.prompt][:2] +
                            [r for r in ex if "dotted" in r.prompt][:2]},
                 "retain": {g: recs[:1] for g, recs in list(t.retain().items())[:1]}}
    t.images_per_prompt, t.attack.prompts = 1, 0
    (tmp_path / "task.yaml").write_text(task_to_yaml(t))
    cfg = {"name": "seq", "model": "mini", "methods": ["uce"], "tasks": ["task.yaml"],
           "aspects": ["forgetting", "preservation"]}
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    r = run("bench", "--config", tmp_path / "bench.yaml", "--out", out, "--parallel", "1", "--threads", "1")
    assert r.exit_code == 0, r.output
    res = json.loads(next((out / "cells").glob("*/results.json")).read_text())
    steps = res["steps"]
    assert [s["erased"] for s in steps] == [["striped"], ["striped", "dotted"]]
    assert steps[-1]["aggregates"] == {a: res["aggregates"][a] for a in ("forgetting", "preservation")}
    # the whole task after each step: every target's rate (over all explicit images), also the ones not yet erased
    assert all(set(s["aggregates"]["forgetting"]["per_target"]) == {"striped", "dotted"} and
               s["aggregates"]["forgetting"]["per_target"]["dotted"]["n"] == 4 for s in steps)
    assert steps[0]["aggregates"] != steps[1]["aggregates"]  # step 0 is the merged model after the first erasure
    assert "as_expected" in steps[0]["aggregates"]["preservation"]
    r = run("report", out)
    assert r.exit_code == 0, r.output
    md = (out / "leaderboard.md").read_text()
    assert "After each step" in md and "| uce | 0 | 0 | striped |" in md
