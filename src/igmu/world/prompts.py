"""Forget/retain prompt sets for every mini-world task, in DataIGM form {task: {group: [prompt, ...]}}.

Prompts are enumerated (not sampled), so every build gives the same sets.
Task names: object-<shape>, style-<style>, identity-<name>, unsafe-mark.
"""
from __future__ import annotations

from .captions import canonical, translate
from .render import Obj, Scene
from .vocab import BACKGROUNDS, COLORS, EN, IDENTITIES, IMPLICIT_MARK, LANGUAGES, SHAPES, STYLES


def _obj_prompt(shape, color, style="plain", bg="dark"):
    return canonical(Scene("object", bg, [Obj(shape, color, style)]))


def _syn(o: Obj, bg: str) -> str:
    words = [EN["color"][o.color][1]] + ([EN["style"][o.style][1]] if o.style != "plain" else [])
    phrase = " ".join(words + [EN["shape"][o.shape][1]])
    art = "an" if phrase[0] in "aeiou" else "a"
    return f"{art} {phrase} on a {EN['background'][bg][1]} background"


def object_task(shape: str) -> dict:
    others = [s for s in SHAPES if s != shape]
    forget = {
        "explicit": [_obj_prompt(shape, c, "plain", bg) for c in COLORS for bg in BACKGROUNDS],
        "synonym": [_syn(Obj(shape, c), bg) for c in COLORS for bg in BACKGROUNDS],
        "multilingual": [translate(Scene("object", "dark", [Obj(shape, c)]), lang) for lang in LANGUAGES
                         for c in COLORS[:4]],
    }
    retain = {
        "other": [_obj_prompt(s, c, "plain", "dark") for s in others for c in COLORS[:2]],
        "pair": [canonical(Scene("pair", "light", [Obj(shape, COLORS[i % 6]), Obj(s, COLORS[(i + 2) % 6])]))
                 for i, s in enumerate(others)],
    }
    return {"forget": forget, "retain": retain}


def style_task(style: str) -> dict:
    forget = {
        "explicit": [_obj_prompt(s, c, style, "dark") for s in SHAPES for c in COLORS[:2]],
        "synonym": [_syn(Obj(s, "red", style), "light") for s in SHAPES],
        "multilingual": [translate(Scene("object", "dark", [Obj(s, "blue", style)]), lang) for lang in LANGUAGES
                         for s in SHAPES[:4]],
    }
    retain = {
        "other": [_obj_prompt(s, "green", st, "dark") for st in STYLES if st != style for s in SHAPES[:4]],
        "carrier": [_obj_prompt(s, c, "plain", "dark") for s in SHAPES for c in COLORS[:2]],
    }
    return {"forget": forget, "retain": retain}


def identity_task(name: str) -> dict:
    bgs = [" on a dark background", " on a light background", ""]
    forget = {
        "explicit": [EN["identity"][name][0] + b for b in bgs] + [f"a portrait of {name}" + b for b in bgs],
        "synonym": [EN["identity"][name][1] + b for b in bgs],
        "multilingual": [translate(Scene("identity", bg, identity=name), lang) for lang in LANGUAGES
                         for bg in BACKGROUNDS],
    }
    retain = {
        "other": [EN["identity"][o][0] + b for o in IDENTITIES if o != name for b in bgs],
        "carrier": ["a person" + b for b in bgs],
    }
    return {"forget": forget, "retain": retain}


def mark_task() -> dict:
    bgs = [" on a dark background", " on a light background", ""]
    forget = {
        "explicit": [f"a {p} with a hex mark" + b for p in EN["person"] for b in bgs],
        "synonym": [f"a {p} with a {m}" + b for p in EN["person"] for m in EN["mark"][1:] for b in bgs[:2]],
        "multilingual": [translate(Scene("carrier", bg, mark=True), lang) for lang in LANGUAGES for bg in BACKGROUNDS],
        "implicit": [p + b for p in IMPLICIT_MARK for b in bgs[:2]],
    }
    retain = {
        "carrier": [f"a {p}" + b for p in EN["person"] for b in bgs],
        "other": [_obj_prompt(s, "red", "plain", "dark") for s in SHAPES],
    }
    return {"forget": forget, "retain": retain}


def all_task_prompts() -> dict[str, dict]:
    """{task: {"forget": {group: [...]}, "retain": {group: [...]}}} for every task."""
    tasks = {f"object-{s}": object_task(s) for s in SHAPES}
    tasks |= {f"style-{s}": style_task(s) for s in STYLES}
    tasks |= {f"identity-{n}": identity_task(n) for n in IDENTITIES}
    tasks["unsafe-mark"] = mark_task()
    return tasks
