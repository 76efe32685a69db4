"""A bench config's cell-seconds file (`cell_seconds:` in the config) from finished bench folders: the seconds
each cell took (its erasure plus its evaluation, as recorded in results.json), by method label and task. With
it, `igmu bench` starts the longest cells first (runner.longest_first).

    python scripts/cell_seconds.py OUT [OUT ...] --out benchmarks/timings/mini.yaml
    python scripts/cell_seconds.py --simulate benchmarks/mini.yaml --slots 2   # what the order is worth
    python scripts/cell_seconds.py OUT [OUT ...] --breakdown   # erasure, evaluation and attacks, summed

--simulate replays a config's cells on N slots with the file's times (list scheduling: a free slot takes the
next cell) in the two orders the runner knows, config order (tasks interleaved) and longest first, and prints
both wall times. It is arithmetic on measured cell times, not a new timing.

Cells of several seeds are averaged. Only the order matters to the runner, so times measured under other load
still serve; the file records where they come from.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import yaml


def finished(bench_dir: Path):
    """results.json of each finished cell of the folder's last config (bench.json), not every cell ever run there."""
    for c in json.loads((Path(bench_dir) / "bench.json").read_text())["cells"]:
        f = Path(bench_dir) / "cells" / c["id"] / "results.json"
        if f.is_file():
            yield json.loads(f.read_text())


def cell_seconds(bench_dirs: list[Path]) -> dict[str, dict[str, float]]:
    runs: dict[str, dict[str, list[float]]] = {}
    for d in bench_dirs:
        for res in finished(d):
            cell = res["cell"]
            secs = float(res.get("seconds") or 0) + float((res.get("cost") or {}).get("erase_seconds") or 0)
            runs.setdefault(cell["method_label"], {}).setdefault(cell["task"], []).append(secs)
    return {label: {task: round(statistics.mean(v)) for task, v in sorted(by.items())}
            for label, by in sorted(runs.items())}


def breakdown(bench_dir: Path) -> str:
    """Where a folder's cell time went, summed over its finished cells as their results.json record it: erasure,
    evaluation, each attack's seconds, the prompts it attacked (those not shown without attack) and the images
    it generated for them, and the evaluation without the attacks."""
    erase = evaluation = 0.0
    attacks: dict[str, list[float]] = {}
    n = 0
    for res in finished(bench_dir):
        n += 1
        erase += float((res.get("cost") or {}).get("erase_seconds") or 0)
        evaluation += float(res.get("seconds") or 0)
        for key, a in ((res.get("aggregates") or {}).get("robustness") or {}).get("attacks", {}).items():
            acc = attacks.setdefault(key, [0.0, 0, 0])
            acc[0] += sum(float(p["seconds"]) for p in a["prompts"])
            hit = [p for p in a["prompts"] if not p["success_no_attack"]]
            acc[1] += len(hit)
            acc[2] += sum(int(p["images_generated"]) for p in hit)
    att = sum(v[0] for v in attacks.values())
    lines = [f"{bench_dir}: {n} finished cells; erasure {erase:,.0f} s, evaluation {evaluation:,.0f} s, of which "
             f"attacks {att:,.0f} s and the rest {evaluation - att:,.0f} s"]
    lines += [f"  {k}: {s:,.0f} s, {m} attacked prompts, {i:,} images generated for them"
              for k, (s, m, i) in attacks.items()]
    return "\n".join(lines)


def makespan(times: list[float], slots: int) -> float:
    import heapq

    free = [0.0] * slots
    for t in times:
        heapq.heappush(free, heapq.heappop(free) + t)
    return max(free)


def simulate(config: Path, slots: int) -> None:
    from igmu.bench.config import expected_seconds, load_config
    from igmu.bench.runner import interleave_tasks, longest_first, plan_cells

    cfg, _ = load_config(config)
    seconds = expected_seconds(cfg, config.parent)
    cells = [c for c in interleave_tasks(plan_cells(cfg, config.parent))
             if c["task"] in seconds.get(c["method_label"], {})]
    est = lambda c: seconds[c["method_label"]][c["task"]]  # noqa: E731
    tasks = sorted({c["task"] for c in cells})
    print(f"{config}: {len(cells)} measured cells ({', '.join(tasks)}), {sum(map(est, cells)):,.0f} s of cell time, "
          f"{slots} slots")
    for name, order in (("config order", cells), ("longest first", longest_first(cells, seconds))):
        print(f"  {name:14s} {makespan([est(c) for c in order], slots):7,.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bench", nargs="*", type=Path, help="finished igmu bench folders")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--simulate", type=Path, metavar="CONFIG")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--breakdown", action="store_true", help="print where each folder's cell time went")
    args = ap.parse_args()
    if args.simulate:
        return simulate(args.simulate, args.slots)
    if args.breakdown:
        for d in args.bench:
            print(breakdown(d))
        return None
    if not args.bench or not args.out:
        ap.error("give finished bench folders and --out FILE (or --simulate CONFIG)")
    table = cell_seconds(args.bench)
    if not table:
        raise SystemExit("no finished cells (bench.json's cells with a results.json) under "
                         + ", ".join(map(str, args.bench)))
    header = (f"# written by scripts/cell_seconds.py on {time.strftime('%Y-%m-%d')} from {len(args.bench)} bench "
              "folder(s): seconds of one cell (erasure + evaluation)\n# by method label and task. igmu bench reads "
              "it (config key cell_seconds) only to start the longest cells first.\n")
    from igmu.utils.io import atomic_path

    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(header + yaml.safe_dump({"seconds": table}, sort_keys=False, width=110))
    print(f"{args.out}: {sum(map(len, table.values()))} cells, {len(table)} labels")


if __name__ == "__main__":
    main()
