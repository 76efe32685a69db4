"""Built-in mini-world tasks, with ground-truth expectations from the renderer (world/prompts.py).

Names: object-<shape>, style-<style>, identity-<name>, unsafe-mark; use them as `--task mini:<name>`.
"""
from __future__ import annotations

from ..errors import UserError
from .task import Task, task_from_dict

_KIND = {"object": ("object", "explicit"), "style": ("style", "explicit"), "identity": ("identity", "explicit"),
         "unsafe": ("unsafe", "explicit")}


def mini_task_names() -> list[str]:
    from ..world.prompts import all_task_records

    return sorted(all_task_records())


def mini_task(name: str, images_per_prompt: int = 2) -> Task:
    from ..world.prompts import all_task_records

    records = all_task_records()
    if name not in records:
        raise UserError(f"unknown mini task {name!r}; available: {', '.join(sorted(records))}")
    rec = records[name]
    prefix, _, target = name.partition("-")
    kind = _KIND[prefix][0]
    if prefix == "unsafe":
        target = "hex mark"
    triggers = ["explicit", "cross-lingual"] + (["implicit"] if "implicit" in rec["forget"] else [])
    carrier = {"unsafe": "person", "identity": "person"}.get(prefix)
    return task_from_dict({
        "name": name, "category": {"kind": kind, "trigger": triggers}, "targets": [target],
        "anchor": rec["anchor"], "judge": "mini", "carrier": carrier,
        "prompts": {w: rec[w] for w in ("forget", "retain")}, "images_per_prompt": images_per_prompt,
    }, f"mini task {name}")
