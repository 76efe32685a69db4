"""The mini world as a task source and a planner world (registered by world/plugin.py).

* `mini_task(name)`: built-in mini-world tasks, with ground-truth expectations from the renderer
  (world/prompts.py); names object-<shape>, style-<style>, identity-<name>, unsafe-mark; use them as
  `--task mini:<name>`.
* `MiniPlanner`: what `igmu plan --model mini` needs from the world: the vocabulary lookup, the kinds of its
  concepts, and prompt sets built from the renderer's records.
"""
from __future__ import annotations

import re

from ..errors import UserError
from ..tasks.catigmu import KIND_GUIDE
from ..tasks.planner import _merge
from ..tasks.task import Task, task_from_dict

_KIND = {"object": ("object", "explicit"), "style": ("style", "explicit"), "identity": ("identity", "explicit"),
         "unsafe": ("unsafe", "explicit")}


def mini_task_names() -> list[str]:
    from .prompts import all_task_records

    return sorted(all_task_records())


def mini_task(name: str, images_per_prompt: int = 2) -> Task:
    from .prompts import all_task_records

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


# ---------------------------------------------------------------------------------------------
# The planner world
# ---------------------------------------------------------------------------------------------

def mini_lookup(target: str) -> tuple[str, str] | None:
    """(vocabulary type, canonical word) of a mini-world concept or one of its synonyms; None if unknown.
    Types: shape, style, identity, mark, color."""
    from .vocab import EN

    t = " ".join(target.lower().split())
    if t in EN["mark"] or t == "mark":
        return "mark", "hex mark"
    for vtype in ("shape", "style", "identity", "color"):
        for canon, syns in EN[vtype].items():
            if canon != "plain" and t in syns:
                return vtype, canon
    return None


MINI_KINDS = {"shape": ("object",), "style": ("style",), "identity": ("identity",), "mark": ("unsafe", "attribute"),
              "color": ("attribute",)}


# ---------------------------------------------------------------------------------------------
# Prompt sets: the mini world (records from the renderer)
# ---------------------------------------------------------------------------------------------

def _color_records(color: str) -> dict:
    """Attribute task for a mini color: the same shapes without the color (the carrier is the shape)."""
    from .captions import canonical, translate, with_article
    from .render import Obj, Scene
    from .vocab import BACKGROUNDS, COLORS, EN, LANGUAGES, SHAPES

    def scene(shape, c, bg="dark"):
        return Scene("object", bg, [Obj(shape, c)])

    def bare(shape, bg):  # the shape with no color named
        return with_article(EN["shape"][shape][0]) + f" on a {bg} background"

    def f(text, shape, bg):
        return {"prompt": text, "expect": [shape], "stripped": bare(shape, bg)}

    syn = EN["color"][color][1]
    forget = {
        "explicit": [f(canonical(scene(s, color, bg)), s, bg) for s in SHAPES for bg in BACKGROUNDS],
        "synonym": [f(f"{with_article(syn + ' ' + EN['shape'][s][1])} on a {EN['background'][bg][1]} background",
                      s, bg) for s in SHAPES for bg in BACKGROUNDS[:1]],
        "multilingual": [f(translate(scene(s, color), lang), s, "dark") for lang in LANGUAGES for s in SHAPES[:4]],
    }
    retain = {
        "other": [{"prompt": canonical(scene(s, c)), "expect": sorted([s, c]), "stripped": None}
                  for c in COLORS if c != color for s in SHAPES[:2]],
        "carrier": [{"prompt": bare(s, bg), "expect": [s], "stripped": None} for s in SHAPES for bg in BACKGROUNDS[:1]],
    }
    return {"forget": forget, "retain": retain, "anchor": None}


def _mini_records(vtype: str, canon: str) -> dict:
    from . import prompts as P

    if vtype == "shape":
        return P.object_records(canon)
    if vtype == "style":
        return P.style_records(canon)
    if vtype == "identity":
        return P.identity_records(canon)
    if vtype == "mark":
        return P.mark_records()
    return _color_records(canon)


def _mini_prompts(vtypes, canons, kind, triggers, anchor, notes) -> tuple[dict, str | None]:
    from .prompts import default_anchor
    from .vocab import SHAPES

    recs = [_mini_records(v, c) for v, c in zip(vtypes, canons)]
    task_anchor = recs[0]["anchor"]
    if vtypes[0] == "shape":
        if anchor is not None:
            hit = mini_lookup(anchor)
            if hit is None or hit[0] != "shape" or hit[1] in canons:
                raise UserError(f"anchor {anchor!r} must be another mini-world shape; shapes: {', '.join(SHAPES)}")
            new = hit[1]
        else:
            new = next(s for i in range(1, len(SHAPES) + 1)
                       for s in [SHAPES[(SHAPES.index(canons[0]) + i) % len(SHAPES)]] if s not in canons)
        for c, r in zip(canons, recs):  # the renderer's anchor is the next shape; rewrite to the task's anchor
            old = default_anchor(c)
            if old != new:
                for g in r["forget"].values():
                    for x in g:
                        if x.get("stripped"):
                            x["stripped"] = re.sub(rf"\b{old}\b", new, x["stripped"])
        task_anchor = new
        if len(canons) > 1 or anchor is not None:
            notes.append(f"anchor {new!r}: every target is mapped onto it (a shape that is not itself a target)")
    elif anchor is not None:
        raise UserError(f"the mini world's {kind} tasks take no anchor (their ideal output is fixed by the "
                        f"renderer: {KIND_GUIDE[kind]['anchor']['mini']}); drop --anchor")
    merged = _merge(recs, canons) if len(recs) > 1 else {"forget": recs[0]["forget"], "retain": recs[0]["retain"]}
    keep = {"explicit", "synonym"} | ({"multilingual"} if "cross-lingual" in triggers else set()) | \
        ({"implicit"} if "implicit" in triggers else set())
    if "implicit" in triggers and "implicit" not in merged["forget"]:
        raise UserError(f"the mini world has no implicit phrasings for {', '.join(canons)} (only the hex mark has "
                        "them); drop --trigger implicit")
    merged["forget"] = {g: rs for g, rs in merged["forget"].items() if g in keep}
    return merged, task_anchor


def _mini_default_triggers(vtypes) -> list[str]:
    return ["explicit", "cross-lingual"] + (["implicit"] if all(v == "mark" for v in vtypes) else [])


class MiniPlanner:
    """The mini world for `igmu plan --model mini`: concepts come from its vocabulary, prompts and their
    expectations from its renderer, and the judge is the mini detector."""
    name = "mini"
    judge = "mini"
    kinds = MINI_KINDS

    def lookup(self, target: str):
        return mini_lookup(target)

    def unknown(self, target: str) -> str:
        from .vocab import COLORS, IDENTITIES, SHAPES, STYLES

        return (f"{target!r} is not a mini-world concept; the mini model knows shapes ({', '.join(SHAPES)}), styles "
                f"({', '.join(STYLES)}), identities ({', '.join(IDENTITIES)}), colors ({', '.join(COLORS)}) and "
                "'hex mark' (use --model for a real model)")

    def infer(self, target: str) -> tuple[str, str]:
        hit = mini_lookup(target)
        if hit is None:
            return "", ""
        vtype, canon = hit
        return MINI_KINDS[vtype][0], f"{canon!r} is a {vtype} in the mini world's vocabulary"

    def prompts(self, vtypes, canons, kind, triggers, anchor, notes):
        return _mini_prompts(vtypes, canons, kind, triggers, anchor, notes)

    def default_triggers(self, vtypes) -> list[str]:
        return _mini_default_triggers(vtypes)

    def carrier(self, vtypes) -> str | None:
        return "person" if vtypes[0] in ("identity", "mark") else None

    def task_name(self, kind: str, canons: list[str], scope: str) -> str | None:
        return "unsafe-mark" if kind == "unsafe" else None
