"""Write the bench config of the transfer diagnostic (docs/calibration.md#the-four-that-miss-the-test-tasks): for
each named preset entry, one method entry per ladder rung ABOVE the rung the calibration chose (up to the top),
with the strength knobs at that rung's values (calibrate.rung_values, from the preset's recorded published
values) and everything else from the preset.

It answers one question for an entry that reached 20% on the calibration concepts but missed the 30% check on
a test task: is there a rung on the ladder at which the method does pass on the test task? The answer is
REPORTED, never fed back: the preset is not changed by it (choosing a rung by its test-task result would be
tuning on the test concepts, which the calibration protocol forbids).

    python scripts/calibration_transfer.py presets/mini.yaml --entries esd-u,ca,receler,advunlearn \\
        --out benchmarks/calibration-transfer.yaml
    igmu bench --config benchmarks/calibration-transfer.yaml --out out/bench-calibration-transfer
    python scripts/calibration_table.py presets/mini.yaml --transfer out/bench-calibration-transfer \\
        --out docs/results/calibration-transfer.md
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from igmu.bench.calibrate import RUNGS, rung_values
from igmu.methods import get_method
from igmu.utils.io import atomic_path

HEAD = """\
# The calibration transfer diagnostic (docs/calibration.md): written by scripts/calibration_transfer.py from {preset};
# do not edit. Each entry is a preset entry at one ladder rung ABOVE the one the calibration chose (strength knobs
# at that rung's values, the rest from the preset), run on the object and style TEST tasks with the evidence floors
# of benchmarks/mini.yaml. Reported only: the preset is never changed from these results.
#   igmu bench --config benchmarks/calibration-transfer.yaml --out out/bench-calibration-transfer
#   python scripts/calibration_table.py {preset} --transfer out/bench-calibration-transfer \\
#       --out docs/results/calibration-transfer.md
"""


def entries(preset: dict, labels: list[str]) -> list[dict]:
    out = []
    for label in labels:
        e = preset["methods"].get(label)
        if e is None:
            raise SystemExit(f"{label!r} is not an entry of the preset (entries: {', '.join(preset['methods'])})")
        method = get_method(e["method"])
        for r in range(e["rung"] + 1, RUNGS):
            values = rung_values(method, r, base=e["published"])
            out.append({"label": f"{label}-r{r}", "method": e["method"], "set": {**e["fixed"], **values}})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset")
    ap.add_argument("--entries", required=True, help="comma-separated preset entries, e.g. esd-u,ca")
    ap.add_argument("--tasks", default="../tasks/mini/object-circle.yaml,../tasks/mini/style-striped.yaml")
    ap.add_argument("--out", default="benchmarks/calibration-transfer.yaml")
    a = ap.parse_args()
    preset = yaml.safe_load(Path(a.preset).read_text())
    out = Path(a.out)
    config = {
        "name": "calibration-transfer",
        "model": preset["model"],
        "preset": os.path.relpath(Path(a.preset).resolve(), out.resolve().parent),  # a config's paths are its own
        "methods": entries(preset, [x.strip() for x in a.entries.split(",") if x.strip()]),
        "tasks": a.tasks.split(","),
        "seeds": [0],
        "aspects": ["forgetting", "preservation"],
        "evaluation": {"min_forget_images": 32, "min_retain_images": 16, "attack_prompts": 0},
        "resources": {"cpus": 1, "gpus": 0},
    }
    with atomic_path(out) as tmp:
        Path(tmp).write_text(HEAD.format(preset=a.preset) + yaml.safe_dump(config, sort_keys=False, width=110))
    print(f"wrote {out}: {len(config['methods'])} entries x {len(config['tasks'])} tasks")


if __name__ == "__main__":
    main()
