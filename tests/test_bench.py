"""igmu bench: resumable after SIGKILL, same results on the Ray backend, one-line config errors."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from igmu.tasks import task_to_yaml
from igmu.world.tasks import mini_task

from cli_helpers import cli
from cli_helpers import one_line_error as _one_line_error

VOLATILE = {"seconds", "cache", "created", "versions"}
# Results are bitwise reproducible at a fixed thread count (CPU kernels round differently with more threads);
# the Ray backend runs each cell with resources.cpus = 1 thread, so every run here uses one thread.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cli(*args, **kw):
    return cli(*args, env=ENV, **kw)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny sweep: 2 fast methods x 1 small style task x 2 seeds, two aspects, one image per prompt."""
    d = tmp_path_factory.mktemp("sweep")
    t = mini_task("style-striped", images_per_prompt=1)
    t.prompts["forget"] = {"explicit": t.forget()["explicit"][:4], "synonym": t.forget()["synonym"][:2]}
    t.prompts["retain"] = {g: recs[:3] for g, recs in t.retain().items()}
    t.attack.prompts = 0
    (d / "task.yaml").write_text(task_to_yaml(t))
    cfg = {"name": "tiny", "model": "mini", "methods": ["uce", {"label": "neg", "method": "negprompt"}],
           "tasks": ["task.yaml"], "seeds": [0, 1], "aspects": ["forgetting", "preservation", "robustness"]}
    (d / "bench.yaml").write_text(yaml.safe_dump(cfg))
    return d / "bench.yaml"


def _results(out):
    res = {}
    for f in sorted((out / "cells").glob("*/results.json")):
        r = json.loads(f.read_text())
        cost = {k: v for k, v in (r.get("cost") or {}).items() if k in ("method", "params_changed")}
        res[f.parent.name] = {**{k: v for k, v in r.items() if k not in VOLATILE and k != "cost"}, "cost": cost}
    return res


@pytest.fixture(scope="module")
def reference(sweep, tmp_path_factory):
    """One cell at a time, in this process."""
    out = tmp_path_factory.mktemp("ref") / "out"
    r = _cli("bench", "--config", str(sweep), "--out", str(out), "--parallel", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "1 cell(s) at once x 1 thread(s)" in r.stderr
    return out


def test_sigkill_three_times_then_resume_gives_the_same_results(sweep, reference, tmp_path):
    out = tmp_path / "out"
    rng = random.Random(7)
    for _ in range(3):
        p = subprocess.Popen([sys.executable, "-m", "igmu.cli", "bench", "--config", str(sweep), "--out", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        time.sleep(rng.uniform(4, 14))
        p.send_signal(signal.SIGKILL)
        p.wait()
    # resumed with two cells at once, each in its own process (the reference ran one at a time)
    r = _cli("bench", "--config", str(sweep), "--out", str(out), "--parallel", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert _results(out) == _results(reference)
    assert {r["runtime"]["threads"] for r in _results(out).values()} == {1}  # recorded: numbers depend on it
    assert not list(out.rglob(".*.tmp"))  # nothing half-written left behind
    # a rerun after completion does nothing
    r = _cli("bench", "--config", str(sweep), "--out", str(out))
    assert r.returncode == 0 and "(0 run now)" in r.stdout


def test_ray_backend_gives_the_same_results(sweep, reference, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "out"
    r = _cli("bench", "--config", str(sweep), "--out", str(out), "--backend", "ray")
    assert r.returncode == 0, r.stderr
    assert _results(out) == _results(reference)


def test_local_backend_slots_and_order(monkeypatch):
    from igmu.bench.runner import interleave_tasks, local_slots

    monkeypatch.setattr("igmu.utils.threads.available_cores", lambda: 8)
    assert local_slots(100, 1, None, None) == (8, 1)  # as Ray places cells: cores / resources.cpus
    assert local_slots(100, 2, None, None) == (4, 2)
    assert local_slots(3, 1, None, None) == (3, 2)  # no more slots than cells; the cores shared among them
    assert local_slots(100, 1, 2, None) == (2, 4) and local_slots(100, 1, None, 4) == (2, 4)
    cells = [{"task": t, "i": i} for t in "aab" for i in range(2)]
    assert [c["task"] for c in interleave_tasks(cells)] == ["a", "b", "a", "b", "a", "a"]


def test_longest_cells_start_first(tmp_path):
    """With a cell-seconds file the cells start longest first (a label measured on another task: its mean; an
    unmeasured label: the median); equal estimates keep their order. A broken file is one line."""
    from igmu.bench.config import BenchConfig, expected_seconds, load_config
    from igmu.bench.runner import longest_first
    from igmu.errors import UserError

    seconds = {"slow": {"a": 900.0, "b": 1500.0}, "mid": {"a": 100.0}, "fast": {"a": 10.0, "b": 20.0}}
    cells = [{"method_label": m, "task": t} for t in "ab" for m in ("fast", "mid", "new", "slow")]
    order = [(c["method_label"], c["task"]) for c in longest_first(cells, seconds)]
    assert order == [("slow", "b"), ("slow", "a"), ("mid", "a"), ("new", "a"), ("mid", "b"), ("new", "b"),
                     ("fast", "b"), ("fast", "a")]  # mid on b: 100 (its mean), new: the median 100
    assert longest_first(cells, {}) == cells
    cfg = BenchConfig(methods=["uce"], tasks=["mini:object-circle"], cell_seconds="t.yaml")
    (tmp_path / "t.yaml").write_text("seconds: {uce: {object-circle: 12}}\n")
    assert expected_seconds(cfg, tmp_path) == {"uce": {"object-circle": 12.0}}
    (tmp_path / "t.yaml").write_text("seconds: {uce: {object-circle: -1}}\n")
    with pytest.raises(UserError, match="non-negative numbers"):
        expected_seconds(cfg, tmp_path)
    with pytest.raises(UserError, match="no such file"):
        expected_seconds(cfg.model_copy(update={"cell_seconds": "nothere.yaml"}), tmp_path)
    bdir = Path(__file__).parents[1] / "benchmarks"
    shipped, _ = load_config(bdir / "mini.yaml")  # the shipped file names only labels the config has
    measured = expected_seconds(shipped, bdir)
    assert measured and set(measured) <= {m.label for m in shipped.methods}


def test_bench_bad_inputs(sweep, tmp_path):
    base = yaml.safe_load(sweep.read_text())
    cases = [({"methods": ["nosuch"]}, "unknown method 'nosuch'"),
             ({"tasks": ["mini:nosuch"]}, "unknown mini task"),
             ({"evaluation": {"judge": "bogus"}}, "unknown judge"),
             ({"colour": 1}, "unknown field 'colour'")]
    for i, (change, needle) in enumerate(cases):
        f = sweep.parent / f"bad{i}.yaml"
        f.write_text(yaml.safe_dump({**base, **change}))
        _one_line_error(_cli("bench", "--config", str(f), "--out", str(tmp_path / f"o{i}")), needle)
    _one_line_error(_cli("bench", "--config", str(sweep), "--out", str(tmp_path / "r"), "--backend", "ray",
                         "--address", "127.0.0.1:9"), "does not answer")
    _one_line_error(_cli("bench", "--config", str(sweep), "--out", str(tmp_path / "x"), "--backend", "slurm"),
                    "unknown --backend")
    _one_line_error(_cli("bench", "--config", str(sweep), "--out", str(tmp_path / "x"), "--parallel", "0"),
                    "--parallel must be at least 1")
    _one_line_error(_cli("bench", "--config", str(sweep), "--out", str(tmp_path / "x"), "--threads", "0"),
                    "--threads must be between 1 and 1024")


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "benchmarks").glob("*.yaml")))
def test_shipped_bench_configs_are_valid(name, monkeypatch):
    from igmu.bench.config import load_config
    from igmu.errors import UserError

    path = Path(__file__).parents[1] / "benchmarks" / name
    if "${" in path.read_text():  # it needs local files (igmu-paper.yaml: tests/test_paperbench.py runs it)
        monkeypatch.delenv("IGMU_SD14", raising=False)
        with pytest.raises(UserError, match=r"model is '\$\{IGMU_SD14\}' but IGMU_SD14 is not set"):
            load_config(path)
        return
    cfg, _ = load_config(path)
    assert cfg.methods and cfg.tasks


def test_extends_shares_fields_and_cells(tmp_path):
    """A variant config (`extends:`) takes the other config's fields and replaces only those it gives; the seed
    variant's seed-0 cells are the main config's object cells (same ids), so it can resume a main run's folder.
    Loops, paths outside the folder and missing files are one-line errors."""
    from igmu.bench.config import load_config
    from igmu.bench.runner import plan_cells
    from igmu.errors import UserError

    bdir = Path(__file__).parents[1] / "benchmarks"
    main, _ = load_config(bdir / "mini.yaml")
    seeds, _ = load_config(bdir / "mini-seeds.yaml")
    published, _ = load_config(bdir / "mini-published.yaml")
    assert [m.label for m in seeds.methods] == [m.label for m in main.methods] == [m.label for m in published.methods]
    assert (seeds.seeds, len(seeds.tasks), published.preset, main.preset) == ([0, 1, 2], 1, "published",
                                                                               "../presets/mini.yaml")
    assert seeds.evaluation == main.evaluation == published.evaluation
    main.methods, seeds.methods = main.methods[:2], seeds.methods[:2]
    main_ids = {c["id"] for c in plan_cells(main, bdir) if c["task"] == "object-circle"}
    seed0 = {c["id"] for c in plan_cells(seeds, bdir) if c["seed"] == 0}
    assert main_ids == seed0 and len(seed0) == 2

    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    (tmp_path / "c.yaml").write_text("extends: ../mini.yaml\n")
    (tmp_path / "d.yaml").write_text("extends: nothere.yaml\n")
    for name, needle in [("a", "loops back"), ("c", "in the same folder"), ("d", "not a file")]:
        with pytest.raises(UserError, match=needle):
            load_config(tmp_path / f"{name}.yaml")


@pytest.mark.slow
def test_slot_workers_give_the_same_results(sweep, reference, tmp_path):
    """The local backend's per-GPU worker processes (here two CPU slots: no GPU on the test machine) give the
    results of the in-process run."""
    from functools import partial

    from igmu.bench.runner import _Tracker, prepare, run_cell, run_in_slots

    out = tmp_path / "slots"
    cfg, _, cells = prepare(sweep, out)
    os.environ["OMP_NUM_THREADS"] = "1"
    run_in_slots(cells, partial(run_cell, bench_dir=str(out), cfg_dict=cfg.model_dump(mode="json")),
                 [{"CUDA_VISIBLE_DEVICES": ""}] * 2, _Tracker(len(cells), 0, lambda m: None, slots=2))
    assert _results(out) == _results(reference)


def test_evidence_floors_raise_images_per_prompt_per_task():
    """min_forget_images / min_retain_images: each task's images per prompt is the smallest that gives its
    explicit forget set and every retain group their floors (the shipped mini tasks: 12, 16, 9 and 6 explicit
    forget prompts; smallest retain groups 7, 12, 8 and 3 prompts); configs without floors keep their cell ids."""
    from igmu.bench.config import BenchConfig, EvalSettings, bench_task, evaluation_key

    base = Path(__file__).parents[1] / "benchmarks"
    names = ["object-circle", "style-striped", "unsafe-mark", "identity-zorb"]
    cfg = BenchConfig(methods=["uce"], tasks=[f"../tasks/mini/{n}.yaml" for n in names],
                      evaluation={"min_forget_images": 32, "min_retain_images": 16})
    tasks = [bench_task(cfg, t, base) for t in cfg.tasks]
    assert [t.images_per_prompt for t in tasks] == [3, 2, 4, 6]
    for t in tasks:
        assert len(t.forget()["explicit"]) * t.images_per_prompt >= 32
        assert min(len(r) for r in t.retain().values()) * t.images_per_prompt >= 16
    # a floor never lowers an explicit images_per_prompt
    cfg.evaluation.images_per_prompt = 5
    assert bench_task(cfg, cfg.tasks[0], base).images_per_prompt == 5
    assert "min_forget_images" not in evaluation_key(EvalSettings())
    assert evaluation_key(cfg.evaluation)["min_forget_images"] == 32
