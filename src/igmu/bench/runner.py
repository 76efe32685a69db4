"""`igmu bench`: methods x tasks x seeds, each cell (erase, generate, evaluate) cached and resumable.

Layout of a bench folder:
    DIR/bench.json                  config, provenance, the list of cells
    DIR/cells/<id>/artifact/        the erasure (or steps/<k>/ for a chained erasure)
    DIR/cells/<id>/results.json     the cell's EvalIGMU results (written last: its presence means done)
    DIR/cache/                      generated images and judge outputs, shared by all cells

A cell's id hashes everything its result depends on (model fingerprint, method and options, task content,
seed, aspects, evaluation settings, igmu version), so a changed config makes new cells and reuses the rest.
Every file is written to a temporary name and renamed: killed at any moment, a rerun redoes only the
unfinished cells (and, inside one, only the unfinished steps: an existing artifact is reused; images
already generated come from the cache).
"""
from __future__ import annotations

import shutil
import time
from functools import partial
from pathlib import Path

from ..errors import UserError
from .config import (BenchConfig, _task_path, bench_task, evaluation_key, expected_seconds, load_config,
                     method_preset, set_args, sha)

SCHEMA = "igmu-bench"
SCHEMA_VERSION = 1


def plan_cells(cfg: BenchConfig, base: Path) -> list[dict]:
    from .. import __version__
    from ..evaluation.cache import model_fingerprint

    model_fp = model_fingerprint(cfg.model)
    presets = {m.label: method_preset(cfg, m, base, model_fp) for m in cfg.methods}
    cells = []
    for t in cfg.tasks:
        task = bench_task(cfg, t, base, evaluation=False)
        spec_path = t if t.startswith("igmu:") else _task_path(t, base)
        for m in cfg.methods:
            p = presets[m.label]
            # the options the erasure runs with: the preset's values under the entry's own `set`
            effective = {**(p.values if p else {}), **m.set}
            for seed in cfg.seeds:
                spec = {"model": cfg.model, "model_fingerprint": model_fp, "method": m.method, "set": effective,
                        "task": task.model_dump(mode="json"), "seed": seed, "aspects": cfg.aspects,
                        "evaluation": evaluation_key(cfg.evaluation), "igmu": __version__, **cfg.runtime_key()}
                cells.append({"id": sha(spec)[:16], "method_label": m.label, "method": m.method, "set": m.set,
                              "preset": p.manifest() if p else None, "task": task.name,
                              "task_spec": spec_path, "seed": seed})
    return cells


def _sets(cell: dict, method) -> list[str]:
    sets = set_args(cell["set"])
    if "seed" in method.Config.model_fields and "seed" not in cell["set"]:
        sets.append(f"seed={cell['seed']}")
    return sets


def cell_runtime(cfg: BenchConfig):
    """The runtime a cell runs in: device auto means CUDA for a cell with resources.gpus > 0 (the GPU(s) its
    backend gave it), the CPU otherwise."""
    from ..utils.device import Runtime

    device = cfg.device
    if device == "auto":
        device = "cuda" if cfg.resources.gpus > 0 else "cpu"
    return Runtime.resolve(device, cfg.dtype, cfg.gradient_checkpointing)


def _preset(cell: dict):
    """The cell's preset as a presets.PresetChoice (resolved and checked when the cells were planned)."""
    from ..presets import PUBLISHED, PresetChoice

    p = cell.get("preset")
    if p is None:
        return None
    if p == PUBLISHED:
        return PresetChoice(PUBLISHED)
    return PresetChoice(p["file"], p["entry"], p["values"], p["sha256"], p["model_fingerprint"])


def _erase(cell: dict, task, model: str, cdir: Path, runtime=None) -> tuple[str, dict, list[str]]:
    """Erase the task's targets; returns (model spec to evaluate, cost, the merged model after each step).
    Chained when the task is sequential (or 'many' with a single-concept method): step k erases target k from
    the merged result of step k-1; unchained, the list of steps is empty."""
    from ..artifacts import export_merged, is_artifact, load_artifact
    from ..erase import run_erase
    from ..methods import get_method

    method = get_method(cell["method"])
    sets = _sets(cell, method)
    targets = list(task.targets)
    chain = len(targets) > 1 and method.kind == "weights" and (
        task.category.scope == "sequential" or not method.multi_concept)
    if not chain:
        art = cdir / "artifact"
        if not is_artifact(art):
            run_erase(model, cell["method"], targets, task.anchor, list(task.preserve), None, sets, art,
                      runtime=runtime, preset=_preset(cell))
        return str(art), {"method": cell["method"], **load_artifact(art)[0]["cost"]}, []
    base, steps, models = model, [], []
    for k, t in enumerate(targets):
        sdir = cdir / "steps" / str(k)
        art, merged = sdir / "artifact", sdir / "merged"
        if not is_artifact(art):
            run_erase(base, cell["method"], [t], task.anchor, list(task.preserve), None, sets, art,
                      runtime=runtime, preset=_preset(cell))
        if not (merged / "model_index.json").is_file():
            export_merged(art, merged)
        steps.append({"target": t, **load_artifact(art)[0]["cost"]})
        base = str(merged)
        models.append(base)
    cost = {"method": cell["method"], "chained_steps": steps,
            "erase_seconds": round(sum(s["erase_seconds"] for s in steps), 3),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
            "params_changed": max(s["params_changed"] for s in steps)}
    return base, cost, models


STEP_ASPECTS = ("forgetting", "preservation")  # what a sequential cell scores after every step


def score_steps(cfg: BenchConfig, task, models: list[str], final: dict, cell: dict, runtime, cache) -> list[dict]:
    """A chained cell scored after every step, not only after the last: the merged model of step k evaluated
    on the whole task (every target's forgetting: the ones erased so far and the ones still to come) for the
    config's aspects among STEP_ASPECTS (forgetting at least). The last step is the cell's own evaluation."""
    from ..evaluation.evaluate import EvalConfig, evaluate
    from ..generate import GenSettings

    ev = cfg.evaluation
    aspects = [a for a in cfg.aspects if a in STEP_ASPECTS] or ["forgetting"]
    out = []
    for k, (t, m) in enumerate(zip(task.targets, models)):
        if k == len(models) - 1:
            aggs = {a: final["aggregates"][a] for a in aspects if a in final["aggregates"]}
        else:
            res = evaluate(cfg.model, m, task,
                           EvalConfig(aspects=aspects, judge=ev.judge, clip=ev.clip, perceptual=ev.perceptual,
                                      lpips_weights=ev.lpips_weights,
                                      settings=GenSettings(steps=ev.steps, guidance=ev.guidance), seed=cell["seed"],
                                      runtime=runtime), cache)
            aggs = res["aggregates"]
        out.append({"step": k, "target": t, "erased": list(task.targets[:k + 1]), "aggregates": aggs})
    return out


def run_cell(cell: dict, bench_dir: str, cfg_dict: dict) -> dict:
    """Erase, generate and evaluate one cell; idempotent. Returns {"id", "seconds", "status"}."""
    from ..evaluation.cache import Cache
    from ..evaluation.evaluate import EvalConfig, evaluate
    from ..generate import GenSettings
    from ..utils.io import atomic_path, dumps_json

    t0 = time.perf_counter()
    cfg = BenchConfig(**cfg_dict)
    bdir = Path(bench_dir)
    cdir = bdir / "cells" / cell["id"]
    if (cdir / "results.json").is_file():
        return {"id": cell["id"], "seconds": 0.0, "status": "cached"}
    cdir.mkdir(parents=True, exist_ok=True)
    task = bench_task(cfg, cell["task_spec"], Path("."))
    ev = cfg.evaluation
    runtime = cell_runtime(cfg)
    unlearned, cost, step_models = _erase(cell, task, cfg.model, cdir, runtime)
    cache = Cache(bdir / "cache")
    res = evaluate(cfg.model, unlearned, task,
                   EvalConfig(aspects=cfg.aspects, judge=ev.judge, clip=ev.clip, features=ev.features, attacks=ev.attacks,
                              perceptual=ev.perceptual, fid_weights=ev.fid_weights, lpips_weights=ev.lpips_weights,
                              settings=GenSettings(steps=ev.steps, guidance=ev.guidance), seed=cell["seed"],
                              runtime=runtime),
                   cache)
    if len(step_models) > 1:
        res["steps"] = score_steps(cfg, task, step_models, res, cell, runtime, cache)
    res["cost"] = cost
    res["unlearned"] = str(Path(unlearned).relative_to(bdir)) if Path(unlearned).is_relative_to(bdir) else unlearned
    res["cell"] = {k: cell.get(k) for k in ("id", "method_label", "method", "set", "preset", "task", "seed")}
    with atomic_path(cdir / "results.json") as tmp:
        Path(tmp).write_text(dumps_json(res, indent=1))
    return {"id": cell["id"], "seconds": round(time.perf_counter() - t0, 1), "status": "done"}


def _clean_stale(bdir: Path) -> None:
    """Temporary files and folders left by a killed run (never read as results)."""
    for p in list(bdir.rglob(".*.tmp")) + list(bdir.rglob(".*.old")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def prepare(config: Path, out: Path, overrides: list[str] | None = None) -> tuple[BenchConfig, dict, list[dict]]:
    from ..utils.versions import versions as _versions
    from ..utils.io import atomic_path, check_out, dumps_json

    cfg, raw = load_config(config, overrides)
    out = check_out(out, lambda o: (o / "bench.json").is_file(), "igmu bench folder")  # rerun: resume
    out.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    cells = plan_cells(cfg, Path(config).parent)
    bench = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "name": cfg.name,
             "config": cfg.model_dump(mode="json"),
             "provenance": {"versions": _versions(), "config_sha256": sha(cfg.model_dump(mode="json")),
                            "config_file": str(config), "overrides": list(overrides or []), "model": cfg.model,
                            "model_fingerprint": None, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
             "cells": cells}
    from ..evaluation.cache import model_fingerprint

    bench["provenance"]["model_fingerprint"] = model_fingerprint(cfg.model)
    with atomic_path(out / "bench.json") as tmp:
        Path(tmp).write_text(dumps_json(bench, indent=1))
    return cfg, bench, cells


class _Tracker:
    """Cells done / running / left, with a time estimate from the cells finished in this run."""

    def __init__(self, total: int, done: int, echo, slots: int = 1):
        self.total, self.done, self.echo, self.slots = total, done, echo, slots
        self.times: list[float] = []
        self.t0 = time.perf_counter()

    def eta(self, running: int) -> str:
        left = self.total - self.done
        if not self.times or left == 0:
            return "?" if left else "0 s"
        per = sum(self.times) / len(self.times)
        secs = per * left / max(min(running, self.slots), 1)
        return f"{secs / 60:.1f} min" if secs >= 60 else f"{secs:.0f} s"

    def _state(self, pending: int) -> str:
        running = min(pending, self.slots)
        return (f"[{self.done}/{self.total} done, {running} running, {self.total - self.done - running} left, "
                f"ETA {self.eta(pending)}]")

    def started(self, cell: dict, pending: int):
        self.echo(f"{self._state(pending)} start {cell['method_label']} x {cell['task']} seed {cell['seed']}")

    def queued(self, n: int):
        self.echo(f"{self._state(n)} {n} cells queued on {self.slots} parallel slots")

    def finished(self, cell: dict, info: dict, pending: int):
        self.done += 1
        if info["status"] == "done":
            self.times.append(info["seconds"])
        running = min(pending, self.slots)
        self.echo(f"[{self.done}/{self.total} done, {running} running, {self.total - self.done - running} left, "
                  f"ETA {self.eta(running)}] {info['status']} {cell['method_label']} x {cell['task']} seed "
                  f"{cell['seed']} in {info['seconds']:.0f} s")


def interleave_tasks(cells: list[dict]) -> list[dict]:
    """Cells in rounds over the tasks (task A's first cell, task B's first, ..., then the second of each), so
    that cells running at the same time belong to different tasks: the original model's images of a task are
    then generated by one cell and found in the cache by the others, not generated twice at once."""
    by: dict[str, list[dict]] = {}
    for c in cells:
        by.setdefault(c["task"], []).append(c)
    queues = list(by.values())
    return [q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q)]


def longest_first(cells: list[dict], seconds: dict[str, dict[str, float]]) -> list[dict]:
    """The cells ordered by their expected seconds, longest first (a stable sort, so equal estimates keep the
    task interleaving). A cell's estimate: its method label on its task; else the label's mean over the tasks
    it was measured on; else the median of all. With parallel slots this is the longest-processing-time-first
    rule: the long cells start at once instead of running alone at the end."""
    import statistics

    every = [x for v in seconds.values() for x in v.values()]
    if not every:
        return cells
    median = statistics.median_high(every)

    def estimate(c: dict) -> float:
        row = seconds.get(c["method_label"], {})
        if c["task"] in row:
            return row[c["task"]]
        return statistics.mean(row.values()) if row else median
    return sorted(cells, key=lambda c: -estimate(c))


def local_slots(todo: int, resources_cpus: float, parallel: int | None, threads: int | None) -> tuple[int, int]:
    """(cells at once, threads per cell) of the local backend: by default as many cells as the cores hold at
    resources.cpus threads each (as Ray places them), each cell an equal share of the cores."""
    from ..utils.threads import available_cores, check_threads

    cores = available_cores()
    check_threads(threads)
    if parallel is None:
        parallel = max(1, cores // (threads or max(1, int(resources_cpus))))
    parallel = max(1, min(parallel, todo))
    return parallel, threads or max(1, cores // parallel)


def run_bench(config: Path, out: Path, backend: str = "local", address: str | None = None, echo=print,
              parallel: int | None = None, threads: int | None = None, overrides: list[str] | None = None) -> dict:
    cfg, bench, cells = prepare(config, out, overrides)
    out = Path(out)
    todo = interleave_tasks([c for c in cells if not (out / "cells" / c["id"] / "results.json").is_file()])
    todo = longest_first(todo, expected_seconds(cfg, Path(config).parent))
    tr = _Tracker(len(cells), len(cells) - len(todo), echo)
    t0 = time.perf_counter()
    if backend == "local":
        envs = local_envs(len(todo), cfg.resources, parallel, threads)
        slots, per = len(envs), int(envs[0]["OMP_NUM_THREADS"])
        gpus = f" on GPU(s) {', '.join(e['CUDA_VISIBLE_DEVICES'] for e in envs)}" if cfg.resources.gpus > 0 else ""
        where = f"backend local, {slots} cell(s) at once x {per} thread(s){gpus}"
    elif backend == "ray":
        if threads:
            cfg.resources.cpus = threads
        where = f"backend ray, {cfg.resources.cpus:g} CPU(s) per cell"
    else:
        raise UserError(f"unknown --backend {backend!r}; backends: local, ray")
    echo(f"bench {cfg.name}: {len(cells)} cells ({len(cfg.methods)} methods x {len(cfg.tasks)} tasks x "
         f"{len(cfg.seeds)} seeds), {len(cells) - len(todo)} already done, {where}")
    cfg_dict = cfg.model_dump(mode="json")
    if backend == "local" and slots > 1 and len(todo) > 1:
        tr.slots = slots
        run_in_slots(todo, partial(run_cell, bench_dir=str(out), cfg_dict=cfg_dict), envs, tr)
    elif backend == "local":
        from ..utils.threads import set_threads

        # results are bitwise equal at equal thread counts, whichever backend and however many cells at once
        set_threads(per)
        for c in todo:
            tr.started(c, 1)
            tr.finished(c, run_cell(c, str(out), cfg_dict), 0)
    else:
        from .ray_backend import run_ray

        run_ray(run_cell, todo, str(out), cfg_dict, cfg.resources, address, tr)
    return {"cells": len(cells), "ran": len(todo), "seconds": round(time.perf_counter() - t0, 1), "out": str(out)}


# ---------------------------------------------------------------- the local backend: parallel cells (CPU threads, GPUs)


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_slots(visible: int, gpus: float) -> list[list[int]]:
    """How the local backend spreads cells over `visible` GPUs when each cell asks for `gpus`: a cell asking
    for k >= 1 GPUs gets k whole GPUs of its own (visible // k cells at a time); a cell asking for a
    fraction f < 1 shares a GPU with floor(1 / f) - 1 others. Returns the GPU indices of each slot."""
    if visible < 1:
        raise UserError(f"resources.gpus is {gpus:g} but no CUDA GPU is visible here; set resources.gpus: 0 "
                        "(the cells then run on the CPU) or run on a machine with a GPU")
    if gpus >= 1:
        k = int(-(-gpus // 1))
        if k > visible:
            raise UserError(f"resources.gpus is {gpus:g} but only {visible} GPU(s) are visible")
        return [list(range(i * k, (i + 1) * k)) for i in range(visible // k)]
    per_gpu = max(1, int(1 // gpus))
    return [[g] for _ in range(per_gpu) for g in range(visible)]


def local_envs(todo: int, resources, parallel: int | None, threads: int | None) -> list[dict]:
    """The environment of each local slot (cells at once): its CPU threads (OMP_NUM_THREADS) and, for cells that
    ask for GPUs, its CUDA_VISIBLE_DEVICES (gpu_slots). CPU cells: local_slots."""
    from ..utils.threads import available_cores, check_threads, thread_env

    if resources.gpus > 0:
        check_threads(threads)
        slots = gpu_slots(_visible_gpus(), resources.gpus)[:max(1, parallel or todo)]
        per = threads or max(1, available_cores() // len(slots))
        return [{**thread_env(per), "CUDA_VISIBLE_DEVICES": ",".join(map(str, s))} for s in slots]
    n, per = local_slots(todo, resources.cpus, parallel, threads)
    return [thread_env(per)] * n


def run_in_slots(items: list[dict], job, envs: list[dict], tracker, describe=None) -> None:
    """Run job(item) for every item in one worker process per slot, each started with its environment (its
    thread count in OMP_NUM_THREADS), taking items from a shared queue until none are left; tracker.finished
    (item, job's result, running) is called here as each ends. `job` and `describe` (item -> the words that
    name it in an error) must be picklable (module-level functions or partials of them); items carry an "id".
    A worker dies with this process (a killed run leaves nothing running); an item's UserError stops the run
    with that line. The bench's cells and `igmu calibrate --parallel`'s methods both run here."""
    import multiprocessing as mp
    import os
    import queue

    ctx = mp.get_context("spawn")  # a fresh interpreter: the slot's environment holds from the start
    jobs, done = ctx.Queue(), ctx.Queue()
    for c in items:
        jobs.put(c)
    procs = []
    saved = dict(os.environ)
    try:
        for env in envs:
            os.environ.update(env)
            p = ctx.Process(target=_slot_worker, args=(jobs, done, job, describe or _cell_words, os.getpid()),
                            daemon=True)
            p.start()
            procs.append(p)
            jobs.put(None)  # one stop mark per worker
    finally:
        os.environ.clear()
        os.environ.update(saved)
    by_id = {c["id"]: c for c in items}
    tracker.queued(len(items))
    left, error = len(items), None
    try:
        while left:
            try:
                kind, cid, info = done.get(timeout=5)
            except queue.Empty:  # is any worker still alive?
                if not any(p.is_alive() for p in procs):
                    error = "a worker process died (out of memory?); rerun the same command to resume"
                    break
                continue
            if kind == "error":
                error = info
                break
            left -= 1
            tracker.finished(by_id[cid], info, min(left, len(procs)))
    finally:
        for p in procs:
            if error is not None or left:
                p.terminate()
            p.join()
    if error is not None:
        raise UserError(error)


def _cell_words(cell: dict) -> str:
    return f"cell {cell['id']} ({cell['method_label']} x {cell['task']})"


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when its parent exits (prctl PR_SET_PDEATHSIG); elsewhere a thread
    watches the parent's pid."""
    import os
    import signal
    import threading

    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent is already gone
        os._exit(1)

    def watch():
        while True:
            time.sleep(2)
            if os.getppid() != parent:
                os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _slot_worker(jobs, done, job, describe, parent: int) -> None:
    import os

    from ..utils.threads import set_threads

    _die_with_parent(parent)
    set_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    while True:
        item = jobs.get()
        if item is None:
            return
        try:
            done.put(("done", item["id"], job(item)))
        except UserError as e:
            done.put(("error", item["id"], str(e)))
            return
        except Exception as e:  # reported by the parent as one line naming the item
            from ..utils.device import hardware_error

            what = describe(item)
            ue = hardware_error(e, what)
            done.put(("error", item["id"], str(ue) if ue else f"{what} failed: {type(e).__name__}: {e}"))
            return
