"""Methods table from a bench folder (e.g. the default mini benchmark), in the format of docs/methods.md:
forgetting and retain accuracy before -> after with 95% intervals, carrier kept, robustness (synonym /
multilingual / implicit forgetting, UnlearnDiffAtk ASR), erase time, peak RSS and parameters changed.

    python scripts/bench_table.py out/bench-mini [--methods rece,advunlearn,...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def pct(a) -> str:
    if not a or a.get("n", 0) == 0:
        return "-"
    return f"{a['value']:.0%} ({a['lo']:.0%}-{a['hi']:.0%})"


def main():
    from igmu.report.bench_report import _get, attack_paths

    ap = argparse.ArgumentParser()
    ap.add_argument("bench_dir")
    ap.add_argument("--methods", default="")
    a = ap.parse_args()
    bench = json.loads((Path(a.bench_dir) / "bench.json").read_text())
    want = [m for m in a.methods.split(",") if m]
    rows = []
    for c in bench["cells"]:
        f = Path(a.bench_dir) / "cells" / c["id"] / "results.json"
        if not f.is_file() or (want and c["method_label"] not in want):
            continue
        r = json.loads(f.read_text())
        ag, cost = r["aggregates"], r.get("cost") or {}
        fo, pr, rob = ag.get("forgetting", {}), ag.get("preservation", {}), ag.get("robustness", {})
        groups = rob.get("groups", {})
        atks = {k: _get(ag, path) for k, path in attack_paths(rob).items()}
        kept = f", carrier kept {pct(pr['carrier_kept'])}" if "carrier_kept" in pr else ""
        rows.append((c["method_label"], c["task"],
                     f"{fo['target_shown_original']['value']:.0%} -> {pct(fo['target_shown'])}{kept}",
                     f"{pr['as_expected_original']['value']:.0%} -> {pct(pr['as_expected'])}",
                     " / ".join(f"{g} {v['target_shown']['value']:.0%}" for g, v in groups.items()),
                     " / ".join(f"{k} {pct(v['asr'])}" for k, v in atks.items() if "asr" in v) or "-",
                     f"{cost.get('erase_seconds', 0):.1f}", f"{cost.get('peak_rss_mb', 0):.0f}",
                     f"{cost.get('params_changed', 0):,}"))
    print("| method | task | forget: target shown (before -> after) | retain: as asked (before -> after) | "
          "robustness: target shown | attack ASR | erase s | peak RSS MB | params changed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    n = {json.dumps(bench["config"]["evaluation"])}
    print(f"\n(evaluation settings: {n.pop()}; 95% bootstrap intervals in brackets, Wilson intervals for ASR)")


if __name__ == "__main__":
    main()
