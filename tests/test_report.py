"""`igmu report`: HTML report, Markdown leaderboard and CSV from a benchmark folder.

Most tests build synthetic results files (fast); one builds its cell with the real `evaluate()` on
pre-generated images; one renders the report in headless Chromium when it is installed."""
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from igmu.errors import UserError
from igmu.report.bench_report import load_bench, radar_scores, write_report

XSS = "<script>alert(1)</script>"


def _agg(v, n=8, w=0.1):
    return {"value": v, "lo": max(v - w, 0.0), "hi": v + w, "n": n}


def _key(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _put_png(root, key, size=8, color=(200, 30, 30)):
    from PIL import Image

    p = root / "cache" / "images" / key[:2] / f"{key}.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(p)


def _results(root, task, label, seed=0, shown=0.25, prompt_extra="", images=True):
    """A synthetic igmu-results dict (every headline aggregate) with records whose images sit in the cache."""
    forget = [f"a red striped circle {prompt_extra}".strip(), "a green striped square"]
    retain = ["a red circle", "a blue square"]
    records = []
    for set_name, group, prompts in (("forget", "explicit", forget), ("retain", "carrier", retain)):
        for role in ("original", "unlearned"):
            for p in prompts:
                k = _key(role if role == "original" else label, p, seed)
                if images:
                    _put_png(root, k, color=(200, 30, 30) if role == "original" else (30, 30, 200))
                rec = {"role": role, "set": set_name, "group": group, "prompt": p, "seed": seed, "key": k,
                       "target_shown": set_name == "forget" and role == "original", "expect": ["circle"]}
                if set_name == "retain":
                    rec["as_expected"] = True
                records.append(rec)
    aggs = {
        "forgetting": {"target_shown": _agg(shown), "target_shown_original": _agg(1.0, w=0)},
        "preservation": {"groups": {"carrier": {"as_expected": _agg(0.9), "as_expected_original": _agg(1.0, w=0)}},
                         "as_expected": _agg(0.9), "as_expected_original": _agg(1.0, w=0),
                         "perceptual_distance": _agg(0.3), "perceptual_identical_share": 0.0},
        "quality": {"retain": {"fid": _agg(0.5), "kid": _agg(0.01), "kid_std": 0.0},
                    "stripped": {"fid": _agg(1.5), "kid": _agg(0.02), "kid_std": 0.0}, "features": "mini-clip"},
        "alignment": {"clip_score_retain": _agg(80.0, w=2), "clip_score_retain_original": _agg(82.0, w=2),
                      "csdr": _agg(20.0, w=5), "clip": "mini-clip"},
        "robustness": {"groups": {"synonym": {"target_shown": _agg(0.5), "target_shown_original": _agg(1.0, w=0)}},
                       "attacks": {"unlearndiffatk:fast": {
                                          "asr": _agg(0.5, n=2), "asr_no_attack": _agg(0.0, n=2),
                                          "budget": {"name": "fast", "tokens": 3},
                                          "prompts": [{"prompt": forget[0], "seed": seed,
                                                       "adversarial_prompt": f"zq {XSS} striped", "success": True,
                                                       "success_no_attack": False, "iterations": 10,
                                                       "final_loss": 0.1, "seconds": 1.5}]}}},
    }
    return {"schema": "igmu-results", "schema_version": 1,
            "task": {"name": task, "category": {"kind": "style"}, "targets": ["striped"]},
            "original": "mini", "unlearned": "artifact", "judge": {"spec": "mini", "card": {}},
            "settings": {"images_per_prompt": 1, "steps": 20, "guidance": 7.5, "seed": seed},
            "aspects": list(aggs), "aggregates": aggs,
            "cost": {"method": label, "erase_seconds": 1.5, "peak_rss_mb": 400.0, "params_changed": 12345},
            "records": records, "seconds": 1.0}


def _bench(root, cells, finished=None, name="bench-1", config=None):
    """Write bench.json and a results.json for each cell in `finished` (default: all)."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for c in cells:
        cell = {"id": c["id"], "method_label": c["label"], "method": c.get("method", c["label"].lower()),
                "set": c.get("set", {}), "task": c["task"], "seed": c.get("seed", 0)}
        out.append(cell)
        if finished is None or c["id"] in finished:
            res = _results(root, c["task"], c["label"], cell["seed"], c.get("shown", 0.25), c.get("prompt_extra", ""))
            res["cell"] = {k: cell[k] for k in ("id", "method_label", "method", "task", "seed")}
            d = root / "cells" / c["id"]
            d.mkdir(parents=True, exist_ok=True)
            (d / "results.json").write_text(json.dumps(res))
    meta = {"schema": "igmu-bench", "schema_version": 1, "name": name,
            "config": config or {"model": "mini", "methods": ["uce", "esd"], "seeds": [0]},
            "provenance": {"versions": {"igmu": "0.1.0", "torch": "2.x"}, "config_sha256": "ab" * 32,
                           "created": "2025-01-01T00:00:00", "model": "mini", "model_fingerprint": "cd" * 32},
            "cells": out}
    (root / "bench.json").write_text(json.dumps(meta))
    return root


CELLS = [{"id": "uce-t-0", "label": "UCE", "task": "style-striped", "shown": 0.1},
         {"id": "esd-t-0", "label": "ESD", "task": "style-striped", "shown": 0.4},
         {"id": "sld-t-0", "label": "SLD", "task": "style-striped"}]


@pytest.fixture()
def bench(tmp_path):
    return _bench(tmp_path / "b", CELLS, finished={"uce-t-0", "esd-t-0"})


def test_report_says_the_cells_cpu_kernels_and_threads(tmp_path):
    """Fine-tuning results differ between CPU thread counts and instruction sets, so the leaderboard says at
    which the cells ran: one, a mix, or not recorded (results written before igmu recorded it)."""
    root = _bench(tmp_path / "b", CELLS)

    def runtime(cid, threads, cpu="AVX2"):
        p = root / "cells" / cid / "results.json"
        p.write_text(json.dumps({**json.loads(p.read_text()), "runtime": {"device": "cpu", "threads": threads,
                                                                         "cpu": cpu}}))
    for cid, t in (("uce-t-0", 1), ("esd-t-0", 2), ("sld-t-0", 1)):
        runtime(cid, t)
    md = write_report(root)["md"].read_text(encoding="utf-8")
    assert "- CPU kernels and threads: mixed: AVX2 x 1 thread\\(s\\) in 2 cells, AVX2 x 2 thread\\(s\\) in 1 cells" in md
    runtime("esd-t-0", 1)
    assert load_bench(root).cpu_runtime() == "AVX2 x 1 thread(s) (all 3 finished cells)"
    assert "CPU kernels and threads" in write_report(root)["html"].read_text(encoding="utf-8")
    runtime("esd-t-0", 1, "AVX512")
    assert load_bench(root).cpu_runtime().startswith("mixed: AVX2 x 1 thread(s) in 2 cells, AVX512")
    assert load_bench(_bench(tmp_path / "old", CELLS)).cpu_runtime() == "not recorded (all 3 finished cells)"


def test_report_files_and_content(bench):
    paths = write_report(bench)
    assert set(paths) == {"html", "md", "csv"}
    assert all(p.parent == bench and p.is_file() for p in paths.values())
    assert [p.name for p in (paths["html"], paths["md"], paths["csv"])] == ["report.html", "leaderboard.md",
                                                                          "leaderboard.csv"]
    html = paths["html"].read_text(encoding="utf-8")
    assert "bench-1" in html and "ab" * 32 in html and "cd" * 32 in html and "2025-01-01" in html
    assert html.count('class="leaderboard"') == 1 and "original model (reference)" in html
    assert "UCE" in html and "ESD" in html and "missing" in html and "SLD" in html  # the unfinished cell
    assert html.count("<svg") >= 2 + 10  # bar charts + one radar per finished method
    assert "1 − max(CSDR / 100, 0)" in html  # the radar mapping is stated
    assert "<details" in html and "groups.carrier.as_expected" in html  # drill-down from summary.rows
    # leaderboard: forgetting 10.0% for UCE is the best (green); the reference row shows the original's value
    assert re.search(r'class="best"><span class="v">10\.0%', html)
    assert "100.0%" in html
    # self-contained: no script, no external fetch; images inline
    assert "<script" not in html and "<link" not in html and "http://" not in html and "https://" not in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert 'class="px"' in html and "image-rendering:pixelated" in html  # small images upscaled crisply
    # files written atomically: no temp file left
    assert not [p for p in bench.iterdir() if p.name.startswith(".")]


def test_markdown_and_csv(bench):
    paths = write_report(bench)
    md = paths["md"].read_text(encoding="utf-8")
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert len(table) == 2 + 1 + 3  # header, rule, reference row, three cells
    assert len({ln.count(" | ") for ln in table if not ln.startswith("|---")}) == 1  # every row: same columns
    assert any(ln.startswith("| SLD (missing)") for ln in table)
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    assert list(rows[0])[:9] == ["task", "method_label", "seed", "aspect", "metric", "value", "lo", "hi", "n"]
    assert {r["method_label"] for r in rows} == {"UCE", "ESD"}
    r = next(r for r in rows if r["method_label"] == "UCE" and r["metric"] == "target_shown")
    assert (r["task"], r["seed"], r["aspect"]) == ("style-striped", "0", "forgetting")
    assert float(r["value"]) == pytest.approx(0.1) and float(r["hi"]) == pytest.approx(0.2) and r["n"] == "8"
    cost = next(r for r in rows if r["method_label"] == "ESD" and r["metric"] == "params_changed")
    assert cost["aspect"] == "cost" and float(cost["value"]) == 12345 and cost["lo"] == ""
    per_cell = [r for r in rows if r["method_label"] == "UCE"]
    assert {r["metric"] for r in per_cell} >= {"retain.fid", "stripped.fid", "csdr", "attacks.unlearndiffatk:fast.asr",
                                              "groups.synonym.target_shown", "erase_seconds"}


def test_user_text_is_escaped_everywhere(tmp_path):
    cells = [{"id": "x-0", "label": f"UCE {XSS} | a*b_", "task": f"task {XSS}", "prompt_extra": XSS},
             {"id": "y-0", "label": "ESD", "task": f"task {XSS}"}]
    root = _bench(tmp_path / "b", cells, name=f"bench {XSS}", config={"model": XSS, "note": "a & b"})
    paths = write_report(root)
    html = paths["html"].read_text(encoding="utf-8")
    assert XSS not in html and "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # the prompt (grid caption and attack table), the adversarial prompt, the label, task, name and config
    assert html.count("&lt;script&gt;") >= 8
    md = paths["md"].read_text(encoding="utf-8")
    assert XSS not in md and "<script>" not in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| UCE"))
    assert "\\|" in row and "\\*" in row and "\\_" in row  # Markdown metacharacters escaped
    header = next(ln for ln in md.splitlines() if ln.startswith("| method"))
    assert row.replace("\\|", "").count("|") == header.count("|")  # the | in the label does not add a column
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    assert {r["method_label"] for r in rows} == {f"UCE {XSS} | a*b_", "ESD"}  # CSV: the text itself, quoted


def test_errors_are_one_line(tmp_path):
    def err(path):
        with pytest.raises(UserError) as e:
            write_report(path)
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    assert "does not exist" in err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "not an igmu bench folder: run igmu bench first" in err(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bench.json").write_text("{not json\n\n")
    assert "cannot read" in err(bad) and "bench.json" in err(bad)
    (bad / "bench.json").write_text(json.dumps({"schema": "something-else"}))
    assert "not an igmu-bench file" in err(bad)
    none = _bench(tmp_path / "none", CELLS, finished=set())
    assert "no finished cell" in err(none)
    assert not (none / "report.html").exists()


def test_damaged_cell_and_missing_image_do_not_stop_the_report(bench, tmp_path):
    (bench / "cells" / "esd-t-0" / "results.json").write_text("{truncated")
    res = json.loads((bench / "cells" / "uce-t-0" / "results.json").read_text())
    gone = next(r["key"] for r in res["records"] if r["role"] == "unlearned" and r["set"] == "forget")
    (bench / "cache" / "images" / gone[:2] / f"{gone}.png").unlink()
    out = tmp_path / "elsewhere" / "report"
    paths = write_report(bench, out)
    assert all(p.parent == out for p in paths.values()) and not (bench / "report.html").exists()
    html = paths["html"].read_text(encoding="utf-8")
    assert "unreadable" in html and "missing" in html and "not in cache" in html
    assert "(unreadable)" in paths["md"].read_text(encoding="utf-8")


def test_radar_mapping():
    res = {"aggregates": {"forgetting": {"target_shown": _agg(0.2)}, "preservation": {"as_expected": _agg(0.9)},
                          "quality": {"retain": {"fid": _agg(1.0)}, "stripped": {"fid": _agg(3.0)}},
                          "alignment": {"csdr": _agg(25.0)},  # percent
                          "robustness": {"groups": {"a": {"target_shown": _agg(0.2)}, "b": {"target_shown": _agg(0.4)}},
                                         "attacks": {"unlearndiffatk:fast": {"asr": _agg(0.6)}}}}}
    assert radar_scores(res) == pytest.approx([0.8, 0.9, 1 / 3, 0.75, 0.6])
    legacy = {"aggregates": {"robustness": {"unlearndiffatk": {"asr": _agg(0.6)}}}}  # results before attack budgets
    assert radar_scores(legacy)[4] == pytest.approx(0.4)
    assert radar_scores({"aggregates": {"forgetting": {"target_shown": _agg(0.5)}}}) == [0.5, None, None, None, None]


def test_multiple_tasks_and_seeds(tmp_path):
    cells = [{"id": f"{m}-{t}-{s}", "label": m, "task": t, "seed": s}
             for m in ("UCE", "ESD") for t in ("t1", "t2") for s in (0, 1)]
    root = _bench(tmp_path / "b", cells)
    b = load_bench(root)
    assert b.tasks() == ["t1", "t2"] and len(b.cells_of("t1")) == 4
    html = write_report(root)["html"].read_text(encoding="utf-8")
    assert html.count('class="leaderboard"') == 2 and "UCE (seed 1)" in html and 'href="#task-1"' in html


@pytest.fixture(scope="module")
def real_bench(tmp_path_factory):
    """One cell from the real evaluate() (forgetting and preservation, on images given to it), one synthetic."""
    from igmu.evaluation.cache import Cache
    from igmu.evaluation.evaluate import EvalConfig, evaluate
    from igmu.tasks import task_from_dict

    root = tmp_path_factory.mktemp("real") / "bench"
    t = task_from_dict({"name": "tiny-striped", "category": {"kind": "style"}, "targets": ["striped"],
                        "images_per_prompt": 1, "attack": {"prompts": 0},
                        "prompts": {"forget": {"explicit": [{"prompt": "a red striped circle", "expect": ["circle"]},
                                                            "a green striped square"]},
                                    "retain": {"carrier": [{"prompt": "a red circle", "expect": ["circle", "red"]}]}}})
    cache = Cache(root / "cache")

    def source(role):
        def get(pairs):
            keys = [_key(role, p, s) for p, s in pairs]
            imgs = np.stack([np.random.default_rng(int(k[:8], 16)).integers(0, 255, (32, 32, 3), dtype=np.uint8)
                             for k in keys])
            for k, im in zip(keys, imgs):
                cache.put_image(k, im)
            return imgs, keys
        return get

    res = evaluate("mini", "uce-artifact", t, EvalConfig(aspects=["forgetting", "preservation"]), cache,
                   images={r: source(r) for r in ("original", "unlearned")})
    cells = [{"id": "uce-0", "label": "UCE", "task": "tiny-striped"},
             {"id": "esd-0", "label": "ESD", "task": "tiny-striped"}]
    _bench(root, cells, finished={"esd-0"})
    res["cell"] = {"id": "uce-0", "method_label": "UCE", "method": "uce", "task": "tiny-striped", "seed": 0}
    (root / "cells" / "uce-0").mkdir(parents=True)
    (root / "cells" / "uce-0" / "results.json").write_text(json.dumps(res))
    return root


def test_real_results(real_bench):
    paths = write_report(real_bench)
    html = paths["html"].read_text(encoding="utf-8")
    assert "a red striped circle" in html and "perceptual_distance" in html
    n_img = len(re.findall(r'src="data:image/png;base64,', html))
    assert n_img >= 2 * 3  # forget: 2 prompts x (original + 2 methods); real records, real cache keys
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text(encoding="utf-8"))))
    real = {r["metric"] for r in rows if r["method_label"] == "UCE"}
    assert {"target_shown", "as_expected", "perceptual_distance"} <= real
    assert not {"retain.fid", "csdr"} & real  # aspects not run are not made up


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_renders_in_headless_chromium(real_bench):
    html = write_report(real_bench)["html"]
    r = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                        "--v=0", "--dump-dom", html.resolve().as_uri()], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'class="leaderboard"' in r.stdout and "original model (reference)" in r.stdout and "UCE" in r.stdout
    assert ":CONSOLE" not in r.stderr  # no JS console message (errors, CSP violations)
