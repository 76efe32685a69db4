"""The Task: what to erase, where it sits in CatIGMU, and the prompt sets that test it.

A task file is YAML (or JSON) with exactly these fields; anything else is an error:

    version: 1
    name: style-striped
    category: {kind: style, binding: carrier, scope: single, trigger: [explicit, cross-lingual]}
    targets: [striped]
    anchor: null
    preserve: []
    judge: mini                 # judge spec for "is the target / the intended content shown"
    carrier: circle             # optional: the carrier concept (person presence for identities/nudity)
    carrier_judge: null         # optional: the judge of the prompts' `expect` concepts (default: judge), e.g.
                                #   clip-person for a nudity task judged by nudenet
    prompts:
      forget:                   # group -> prompts; "explicit" is the forgetting aspect,
        explicit:               #   every other forget group is a robustness probe
          - a red striped circle on a dark background
          - {prompt: a blue striped square, expect: [square, blue], stripped: a blue square}
        synonym: [...]
      retain:                   # group -> prompts whose `expect` must still be shown
        carrier:
          - {prompt: a red circle on a dark background, expect: [circle, red]}
    prompts_file: prompts.json  # alternatively: DataIGM JSON {task: {forget|retain: {group: [prompt]}}}
    images_per_prompt: 2
    attack: {prompts: 4, attacks: [unlearndiffatk:fast]}

A prompt is a string or a record {prompt, expect, stripped}: `expect` lists the
concepts the image must still show (retain: what it asks for; forget, for a
carrier-bound target: the carrier); `stripped` is the prompt without the
target (or with the anchor in its place), used by CSDR and the quality aspect.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError
from ..utils.validate import TASK_FIELDS, check_concepts

KINDS = ("object", "style", "identity", "unsafe", "attribute", "instance")
BINDING = {"object": "stand-alone", "identity": "stand-alone", "instance": "stand-alone",
           "style": "carrier", "unsafe": "carrier", "attribute": "carrier"}
SCOPES = ("single", "many", "sequential")
TRIGGERS = ("explicit", "implicit", "cross-lingual")
ROBUSTNESS_GROUPS = ("synonym", "paraphrase", "multilingual", "implicit")  # documentation; any non-explicit group counts


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Category(_Strict):
    kind: Literal["object", "style", "identity", "unsafe", "attribute", "instance"]
    binding: Literal["stand-alone", "carrier"] | None = None  # default: from the kind (BINDING)
    scope: Literal["single", "many", "sequential"] = "single"
    trigger: list[Literal["explicit", "implicit", "cross-lingual"]] = Field(default_factory=lambda: ["explicit"])

    @model_validator(mode="after")
    def _binding(self):
        if self.binding is None:
            self.binding = BINDING[self.kind]
        return self


class PromptRecord(_Strict):
    prompt: str = Field(max_length=10_000)  # generate.MAX_PROMPT_CHARS
    expect: list[str] = Field(default_factory=list)
    stripped: str | None = None

    @field_validator("prompt")
    @classmethod
    def _nonempty(cls, v):
        if not v.strip():
            raise ValueError("empty prompt")
        return v.strip()


class AttackSettings(_Strict):
    """The attacks of the robustness aspect, on the first `prompts` explicit forget prompts (0: none).
    `attacks` are "name:budget" items (igmu attacks lists them; budgets: official, fast, tiny)."""
    prompts: int = Field(4, ge=0, le=10_000)
    attacks: list[str] = Field(default_factory=lambda: ["unlearndiffatk:fast"])

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, v):
        old = sorted(set(v) & {"tokens", "steps", "lr", "check_every", "target_images"}) if isinstance(v, dict) else []
        if old:
            raise ValueError(f"attack.{old[0]} is no longer a setting: attacks run at named budgets, e.g. "
                             "attack: {prompts: 4, attacks: [unlearndiffatk:fast]} (see igmu attacks)")
        return v


class Task(_Strict):
    version: Literal[1] = 1
    name: str
    category: Category
    targets: list[str] = Field(min_length=1)
    anchor: str | None = None
    preserve: list[str] = Field(default_factory=list)
    judge: str = "mini"
    carrier: str | None = None
    carrier_judge: str | None = None
    prompts: dict[Literal["forget", "retain"], dict[str, list[PromptRecord]]] = Field(default_factory=dict)
    prompts_file: str | None = None
    images_per_prompt: int = Field(2, ge=1, le=10_000)  # generate.MAX_IMAGES_PER_PROMPT
    attack: AttackSettings = Field(default_factory=AttackSettings)

    @field_validator("prompts", mode="before")
    @classmethod
    def _records(cls, v):
        if not isinstance(v, dict):
            return v
        out = {}
        for which, groups in v.items():
            if not isinstance(groups, dict):
                raise ValueError(f"prompts.{which} must map group names to lists of prompts")
            out[which] = {g: [{"prompt": p} if isinstance(p, str) else p for p in ps] if isinstance(ps, list)
                          else ([] if ps is None else ps) for g, ps in groups.items()}  # not a list: pydantic says so
        return out

    # --- views ---------------------------------------------------------
    def forget(self) -> dict[str, list[PromptRecord]]:
        return self.prompts.get("forget", {})

    def retain(self) -> dict[str, list[PromptRecord]]:
        return self.prompts.get("retain", {})

    def concepts(self) -> list[str]:
        """Every concept the task names (targets, anchor, preserve, carrier, expectations): zero-shot classes."""
        out = list(self.targets) + [c for c in [self.anchor, self.carrier] if c] + list(self.preserve)
        for groups in self.prompts.values():
            for recs in groups.values():
                for r in recs:
                    out += r.expect
        return list(dict.fromkeys(c for c in out if c and c.strip()))


def _first_error(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field {loc!r}; fields: {', '.join(Task.model_fields)}" if "." not in loc else \
            f"{where}: unknown field {loc!r}"
    if err["type"] == "missing":
        return f"{where}: missing field {loc!r}"
    return f"{where}: bad value for {loc!r}: {err['msg']}"


def _read_mapping(path: Path, what: str) -> dict:
    from ..utils.io import read_mapping

    return read_mapping(path, what, "YAML/JSON")


def _prompts_from_file(path: Path, name: str) -> dict:
    """DataIGM prompt JSON: {task: {forget|retain: {group: [prompt]}}} (the task's entry), or {forget|retain: ...}."""
    data = _read_mapping(path, "prompts_file")
    if name in data:
        data = data[name]
    if not isinstance(data, dict) or not ({"forget", "retain"} & set(data)):
        raise UserError(f"prompts_file {path} has no forget/retain sets for task {name!r} "
                        "(expected DataIGM JSON {task: {forget: {group: [prompt]}, retain: {...}}})")
    return {k: v for k, v in data.items() if k in ("forget", "retain")}


def task_from_dict(data: dict, where: str = "task", base_dir: Path | None = None) -> Task:
    data = dict(data)
    if data.get("prompts_file") and not data.get("prompts"):
        pf = Path(data["prompts_file"])
        if base_dir is not None and not pf.is_absolute():
            pf = base_dir / pf
        data["prompts"] = _prompts_from_file(pf, str(data.get("name", "")))
    try:
        task = Task(**data)
    except ValidationError as e:
        raise UserError(_first_error(e, where)) from None
    try:
        check_concepts(task.targets, task.anchor, task.preserve, TASK_FIELDS)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if not task.forget().get("explicit"):
        raise UserError(f"{where}: prompts.forget.explicit must list at least one prompt that names the target")
    return task


# Task sources: a plug-in registers a prefix and a function name -> Task (the mini world: "mini", so
# --task mini:style-striped); igmu.tasks.load_task looks the prefix up before treating the spec as a file.
SOURCES: dict[str, object] = {}


def register_source(prefix: str, load, names=None) -> None:
    """`load(name) -> Task`; `names() -> list[str]` lists the source's tasks (for help and errors)."""
    SOURCES[prefix] = (load, names)


def task_sources() -> dict:
    from ..plugins import load_plugins

    load_plugins()
    return dict(SOURCES)


def task_from_file(spec: str) -> Task:
    """A task from a YAML/JSON file."""
    path = Path(spec)
    return task_from_dict(_read_mapping(path, "task file"), f"task file {path}", path.parent)


def task_to_yaml(task: Task) -> str:
    return yaml.safe_dump(json.loads(task.model_dump_json(exclude_none=True)), sort_keys=False, allow_unicode=True)
