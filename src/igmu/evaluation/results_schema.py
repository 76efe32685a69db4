"""The shape of an igmu-results file, checked before anything reads it (igmu report, summaries).

evaluate.write_results writes it; a file edited by hand, truncated or produced by another tool must be reported
as malformed in one line, not crash a reader. The check is strict about the types of what readers use and lenient
about everything else (unknown fields are kept, so newer writers can add fields):

- top level: schema "igmu-results", schema_version <= 1, aggregates a mapping of aspect -> mapping;
  task, judge, settings, cost mappings; aspects a list of names; records a list of records.
- an aggregate (any mapping in `aggregates` with a "value" key) is {"value", "lo", "hi", "n"}: value, lo, hi
  numbers or null (lo and hi numbers whenever value is), n an integer or null.
- anything else under `aggregates`: mappings, lists and JSON scalars; a "groups" entry maps names to mappings;
  an attack's "prompts" (robustness.unlearndiffatk.prompts) lists mappings of scalars.
- a record: role, set, group, prompt, key text (or null), seed an integer (or null), flags booleans (or null).
NaN/Infinity read from old files are allowed where a number is (readers show them as missing).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SCALARS = (str, int, float, bool, type(None))


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Aggregate(_Loose):
    value: float | None
    lo: float | None
    hi: float | None
    n: int | None


class TaskInfo(_Loose):
    name: str | None = None
    category: dict[str, str | list[str] | None] | None = None
    targets: list[str] | None = None
    anchor: str | None = None


class JudgeInfo(_Loose):
    spec: str | None = None


class Record(_Loose):
    role: str | None = None
    set: str | None = None
    group: str | None = None
    prompt: str | None = None
    key: str | None = None
    seed: int | None = None
    target_shown: bool | None = None
    as_expected: bool | None = None


class ResultsFile(_Loose):
    schema_: Literal["igmu-results"] = Field("igmu-results", alias="schema")
    schema_version: int = Field(1, ge=1, le=1)
    task: TaskInfo | None = None
    original: str | None = None
    unlearned: str | None = None
    judge: JudgeInfo | None = None
    settings: dict[str, Any] | None = None
    aspects: list[str] | None = None
    aggregates: dict[str, dict[str, Any]]
    cost: dict[str, Any] | None = None
    records: list[Record] | None = None
    seconds: float | None = None


def _walk(node, path: str) -> None:
    """The rules for what lies under `aggregates` (iterative: depth is bounded when the JSON is loaded)."""
    stack = [(node, path)]
    while stack:
        x, where = stack.pop()
        if isinstance(x, dict):
            if "value" in x:
                try:
                    a = Aggregate(**x)
                except ValidationError as e:
                    raise ValueError(f"{where}: not an aggregate {{value, lo, hi, n}}: {_first(e)}") from None
                if a.value is not None and (a.lo is None or a.hi is None):
                    raise ValueError(f"{where}: an aggregate with a value needs lo and hi")
                continue
            for k, v in x.items():
                here = f"{where}.{k}"
                if k == "groups" and not (isinstance(v, dict) and all(isinstance(g, dict) for g in v.values())):
                    raise ValueError(f"{here} must map group names to mappings")
                if k == "prompts" and where.endswith(".unlearndiffatk") and not (isinstance(v, list) and all(
                        isinstance(p, dict) and all(isinstance(s, SCALARS) for s in p.values()) for p in v)):
                    raise ValueError(f"{here} must be a list of mappings of plain values")
                stack.append((v, here))
        elif isinstance(x, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(x))
        elif not isinstance(x, SCALARS):
            raise ValueError(f"{where}: unexpected {type(x).__name__}")


def _first(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]


def check_results(res) -> dict:
    """`res` (parsed JSON) if it is a well-formed igmu-results file, else ValueError naming the first problem."""
    if not isinstance(res, dict):
        raise ValueError(f"not an igmu-results file (a JSON {type(res).__name__}, not a mapping)")
    if isinstance(res.get("schema_version"), int) and not isinstance(res.get("schema_version"), bool) \
            and res["schema_version"] > 1:
        raise ValueError(f"results schema_version {res['schema_version']} is newer than this igmu")
    try:
        ResultsFile(**res)
    except ValidationError as e:
        raise ValueError(f"not a well-formed igmu-results file: {_first(e)}") from None
    except TypeError as e:  # keys that are not names
        raise ValueError(f"not a well-formed igmu-results file: {e}") from None
    for aspect in res.get("aspects") or []:
        if aspect in res["aggregates"] and not isinstance(res["aggregates"][aspect], dict):
            raise ValueError(f"aggregates.{aspect} must be a mapping")
    _walk(res["aggregates"], "aggregates")
    return res
