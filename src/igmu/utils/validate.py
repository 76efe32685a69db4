"""One input-validation layer: every file a user hands igmu and every number or concept a command takes passes
through here, and every mistake becomes one UserError line (the CLI prints it as "error: ..." and exits 2).

Files
    read_text        a text file: must exist, be a file (a folder is called a folder), fit `max_bytes`,
                     and be UTF-8 (a binary or Latin-1 file gets a line naming the first bad byte).
    parse_json       JSON with a nesting limit (MAX_DEPTH) checked without recursion; NaN and Infinity
                     (which are not JSON) refused unless allowed.
    parse_yaml       YAML through PyYAML's safe loader, after a pass over the parser's events (iterative, so
                     it cannot recurse) that refuses nesting deeper than MAX_DEPTH and documents whose size
                     with every alias expanded exceeds MAX_YAML_NODES: a "billion laughs" bomb is refused
                     before anything is built from it. Python tags are refused by the safe loader.
    load_mapping     a YAML or JSON file holding a mapping (task files, bench configs, --config).
Numbers
    check_int / check_float   finite and within documented bounds; check_seed: 0 <= seed and seed + count - 1
                     <= SEED_MAX (torch generators take signed 64-bit seeds).
Concepts
    check_concepts   targets, anchor and preserved concepts by the same text rules (non-empty, at most
                     MAX_CONCEPT_CHARS, no control characters, no target twice, anchor and preserved concepts
                     different from every target); their length in tokens is checked against the model's
                     tokenizer once a model is loaded (methods/common.check_request).

Hand-written rather than a library: no library offered offline bounds YAML alias expansion before construction
(PyYAML expands lazily into shared objects, and the blow-up happens in whatever walks them next), and
Python's json module has no depth limit other than the interpreter's recursion limit.
"""
from __future__ import annotations

import json
import math
import os
import unicodedata
from pathlib import Path

from ..errors import UserError

MAX_DEPTH = 64  # nesting of JSON/YAML containers; igmu's own files nest at most 6 deep
MAX_YAML_NODES = 200_000  # nodes of a YAML document with every alias expanded
MAX_CONFIG_BYTES = 16 << 20  # task files, bench configs, --config, prompt files, manifests
MAX_RESULTS_BYTES = 512 << 20  # results.json / bench.json (per-image records of large evaluations)
SEED_MAX = 2 ** 63 - 1
MAX_CONCEPT_CHARS = 1000


def _one_line(x) -> str:
    return " ".join(str(x).split())


# --- files -----------------------------------------------------------------------------------------------------

def check_file(path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> Path:
    """`path` is an existing regular file of at most `max_bytes`, else one UserError line."""
    p = Path(path)
    name = _one_line(path)
    try:
        if p.is_dir():
            raise UserError(f"{what} {name} is a folder, not a file")
        if not p.exists():
            raise UserError(f"{what} {name} does not exist")
        if not p.is_file():
            raise UserError(f"{what} {name} is not a regular file")
        size = p.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read {what} {name}: {e.strerror}") from None
    if size > max_bytes:
        raise UserError(f"{what} {name} is {size / 2**20:.1f} MiB; igmu reads at most {max_bytes / 2**20:.0f} MiB")
    return p


def read_text(path, what: str, max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """A UTF-8 text file (a leading BOM is dropped). Binary files, NUL bytes and other encodings: one line."""
    p = check_file(path, what, max_bytes)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {_one_line(path)}: {e.strerror}") from None
    if len(data) > max_bytes:  # grew since stat
        raise UserError(f"{what} {_one_line(path)} is larger than {max_bytes / 2**20:.0f} MiB")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{what} {_one_line(path)} is UTF-16 text; save it as UTF-8")
    if b"\x00" in data:
        raise UserError(f"{what} {_one_line(path)} is a binary file (it contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {_one_line(path)} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); save it as UTF-8") from None


def _check_depth(obj, what: str, max_depth: int) -> None:
    """Iterative depth check of parsed JSON/YAML data (lists and dicts)."""
    stack = [(obj, 1)]
    seen = set()
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            if d > max_depth:
                raise UserError(f"{what} nests deeper than {max_depth} levels")
            if id(x) in seen:  # shared (YAML aliases): walked once
                continue
            seen.add(id(x))
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))


def parse_json(text: str, what: str, max_depth: int = MAX_DEPTH, allow_nan: bool = False):
    """JSON text -> data; malformed, too deep or non-finite (NaN/Infinity) input is one UserError line."""
    def _constant(name):
        raise UserError(f"{what} contains {name}, which is not a JSON number")

    try:
        data = json.loads(text, parse_constant=None if allow_nan else _constant)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise UserError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise UserError(f"{what} is not valid JSON ({_one_line(e)})") from None
    _check_depth(data, what, max_depth)
    return data


def load_json(path, what: str, max_bytes: int = MAX_CONFIG_BYTES, max_depth: int = MAX_DEPTH,
              allow_nan: bool = False):
    return parse_json(read_text(path, what, max_bytes), f"{what} {_one_line(path)}", max_depth, allow_nan)


def _yaml_guard(text: str, what: str, max_depth: int, max_nodes: int) -> None:
    """Walk the parser's events (no recursion, nothing constructed): refuse deep nesting and alias blow-up."""
    import yaml
    from yaml import events as ev

    sizes: dict[str, int] = {}  # anchor -> expanded node count of the node it names
    frames: list[list] = []  # open collections: [anchor, expanded size so far]
    total = 0

    def add(n: int):
        nonlocal total
        total += n
        if total > max_nodes:
            raise UserError(f"{what} expands to more than {max_nodes:,} YAML nodes (are aliases, *name, "
                            "repeating a large anchor?); igmu refuses it")
        if frames:
            frames[-1][1] += n

    for e in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(e, (ev.SequenceStartEvent, ev.MappingStartEvent)):
            if len(frames) >= max_depth:
                raise UserError(f"{what} nests deeper than {max_depth} levels")
            frames.append([e.anchor, 1])
            total += 1
        elif isinstance(e, (ev.SequenceEndEvent, ev.MappingEndEvent)):
            anchor, size = frames.pop()
            if anchor is not None:
                sizes[anchor] = size
            if frames:
                frames[-1][1] += size
        elif isinstance(e, ev.ScalarEvent):
            if e.anchor is not None:
                sizes[e.anchor] = 1
            add(1)
        elif isinstance(e, ev.AliasEvent):
            add(sizes.get(e.anchor, 1))  # an unknown alias is reported by the loader below


def parse_yaml(text: str, what: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_YAML_NODES):
    """YAML text -> data with the safe loader, after the depth and alias-expansion guard; one line on error."""
    import yaml

    try:
        _yaml_guard(text, what, max_depth, max_nodes)
        data = yaml.load(text, Loader=yaml.SafeLoader)  # noqa: S506 (SafeLoader: no Python objects)
    except yaml.YAMLError as e:
        raise UserError(f"{what} is not valid YAML: {_one_line(str(e).splitlines()[0] if str(e) else e)}") from None
    except RecursionError:
        raise UserError(f"{what} nests deeper than {max_depth} levels") from None
    except ValueError as e:  # e.g. an integer too long to convert
        raise UserError(f"{what} is not valid YAML: {_one_line(e)}") from None
    _check_depth(data, what, max_depth)
    _check_finite_data(data, what)
    return data


def _check_finite_data(data, what: str) -> None:
    """YAML's .inf and .nan are floats; configs never need them (they are refused here, once, for all)."""
    stack, seen = [data], set()
    while stack:
        x = stack.pop()
        if isinstance(x, float) and not math.isfinite(x):
            raise UserError(f"{what} contains a non-finite number ({x}); give a finite value")
        if isinstance(x, (list, dict)) and id(x) not in seen:
            seen.add(id(x))
            stack.extend(x.values() if isinstance(x, dict) else x)
            if isinstance(x, dict):
                stack.extend(k for k in x if isinstance(k, float))


def read_csv_rows(text: str, what: str) -> list[dict]:
    """CSV rows (csv.DictReader) of text read with read_text; a malformed CSV (e.g. a field over csv's limit of
    131,072 characters, a NUL byte) is one line."""
    import csv
    import io

    try:
        return list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise UserError(f"{what} is not a valid CSV file ({_one_line(e)})") from None


def load_mapping(path, what: str, kind: str = "YAML", max_bytes: int = MAX_CONFIG_BYTES) -> dict:
    """A YAML (or JSON, which YAML reads too) file holding a mapping of field: value."""
    text = read_text(path, what, max_bytes)
    data = parse_yaml(text, f"{what} {_one_line(path)}") if kind != "JSON" else \
        parse_json(text, f"{what} {_one_line(path)}")
    if not isinstance(data, dict):
        raise UserError(f"{what} {_one_line(path)} must be a mapping of field: value")
    return data


# --- numbers ---------------------------------------------------------------------------------------------------

def _bounds(lo, hi) -> str:
    if lo is not None and hi is not None:
        return f"between {lo:g} and {hi:g}" if isinstance(lo, float) or isinstance(hi, float) else \
            f"between {lo} and {hi}"
    return f"at least {lo}" if lo is not None else f"at most {hi}"


def check_int(value, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be an integer, got {_one_line(value)!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise UserError(f"{what} must be {_bounds(lo, hi)}, got {value}")
    return value


def check_float(value, what: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> float:
    """A finite number within [lo, hi] ((lo, hi] with lo_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{what} must be a number, got {_one_line(value)!r}")
    if not math.isfinite(value):
        raise UserError(f"{what} must be a finite number, got {value}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise UserError(f"{what} must be {'greater than' if lo_open else 'at least'} {lo:g}"
                        + (f" and at most {hi:g}" if hi is not None else "") + f", got {value:g}")
    if hi is not None and value > hi:
        raise UserError(f"{what} must be at most {hi:g}, got {value:g}")
    return float(value)


def check_seed(seed, what: str = "--seed", count: int = 1) -> int:
    """A seed such that seed, seed+1, ..., seed+count-1 are all valid torch seeds (0..2**63-1)."""
    check_int(seed, what)
    if seed < 0 or seed + max(count, 1) - 1 > SEED_MAX:
        extra = f" (it is used up to seed + {count - 1})" if count > 1 else ""
        raise UserError(f"{what} must be between 0 and 2**63-1{extra}, got {seed}")
    return seed


# --- concepts --------------------------------------------------------------------------------------------------

def check_concept(text, what: str, example: str) -> str:
    """One concept (target, anchor, preserved concept): stripped, non-empty, no control characters, bounded.
    `example` shows how to give it, e.g. '--target "circle"' or 'targets: [circle]'."""
    if not isinstance(text, str):
        raise UserError(f"{what} must be text, got {_one_line(text)!r}")
    t = text.strip()
    if not t:
        raise UserError(f"empty {what}; give the concept as text, e.g. {example}")
    if len(t) > MAX_CONCEPT_CHARS:
        raise UserError(f"{what} is {len(t)} characters long; at most {MAX_CONCEPT_CHARS}")
    bad = next((c for c in t if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise UserError(f"{what} {_one_line(t)[:60]!r} contains the control character {bad!r}")
    return t


CLI_FLAGS = ("--target", "--anchor", "--preserve")
TASK_FIELDS = ("targets", "anchor", "preserve")
_EXAMPLES = {"--target": '--target "circle"', "--anchor": '--anchor "square"', "--preserve": '--preserve "star"',
             "targets": "targets: [circle]", "anchor": "anchor: square", "preserve": "preserve: [star]"}


def check_concepts(targets, anchor, preserve, flags=CLI_FLAGS):
    """Targets, anchor and preserved concepts checked by the same rules; returns them stripped.

    No target twice; the anchor and every preserved concept differ from every target (case-insensitive: CLIP
    tokenizers lower-case). An empty or blank anchor means no anchor (None): methods then use the empty prompt.
    `flags` names the three in messages: the CLI's options (CLI_FLAGS) or a task file's fields (TASK_FIELDS)."""
    tf, af, pf = flags
    ts = [check_concept(t, "target", _EXAMPLES.get(tf, tf)) for t in targets or []]
    low = [t.casefold() for t in ts]
    if len(set(low)) != len(low):
        raise UserError(f"the same target is given twice in {tf}")
    a = None
    if anchor is not None and (not isinstance(anchor, str) or anchor.strip()):
        a = check_concept(anchor, "anchor", _EXAMPLES.get(af, af))
        if a.casefold() in low:
            raise UserError(f"the {af} {a!r} is one of the targets; anchor the target to a different concept")
    ps = [check_concept(p, "preserved concept", _EXAMPLES.get(pf, pf)) for p in preserve or []]
    for p in ps:
        if p.casefold() in low:
            raise UserError(f"the {pf} {p!r} is also a target; a concept cannot be both erased and preserved")
    return ts, a, ps


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
