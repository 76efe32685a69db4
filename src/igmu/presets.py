"""Presets: a model's calibrated values of the methods' options, written by `igmu calibrate`
(igmu/bench/calibrate.py, which holds the rule) and read by `igmu erase --preset` and bench configs.

A preset file (presets/<model>.yaml) is YAML:

    format: igmu-preset
    version: 1
    model: mini                          # what it was calibrated on
    model_fingerprint: <sha256>          # of that model's files (models.load.model_hash)
    rule: {...}                          # the calibration rule, ladder, budget caps (provenance)
    calibration: {...}                   # concepts, tasks, judge, prompts, n, excluded test concepts
    created: ...; igmu_version: ...
    methods:
      esd-x:                             # an entry: a label
        method: esd
        fixed: {train_method: xattn}     # options that select the entry (a variant of the method)
        set: {lr: 0.0016, iterations: 100, sample_steps: 10}   # what the preset applies
        published: {...}; status: reached | best-tradeoff | no-knob; rung: 3; rungs: [...]  (provenance)

Options are resolved as: the method's published defaults <- the preset's `set` <- --config <- --set.
`--preset published` (or no preset) keeps the published defaults, and says so in the artifact manifest.
An entry is chosen by the method and its `fixed` options: `--method esd` takes the entry whose fixed
options equal the run's (train_method xattn by default: esd-x; `--set train_method=noxattn`: esd-u).

Errors (one line each): not a preset file; a preset made for another model (its fingerprint differs);
a preset with no entry for the method (or for this variant of it).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError

FORMAT = "igmu-preset"
VERSION = 1
PUBLISHED = "published"


@dataclass
class PresetChoice:
    """The preset values one erasure uses, with where they came from (recorded in the artifact manifest)."""
    source: str  # "published", or the preset file's path
    entry: str | None = None  # the entry's label
    values: dict = field(default_factory=dict)  # option -> value applied under --config / --set
    sha256: str | None = None  # of the preset file
    model_fingerprint: str | None = None

    def manifest(self) -> dict | str:
        if self.source == PUBLISHED:
            return PUBLISHED
        return {"file": self.source, "entry": self.entry, "sha256": self.sha256, "values": self.values,
                "model_fingerprint": self.model_fingerprint}


_READ: dict[tuple, dict] = {}  # (resolved path, sha256 of its bytes) -> validated mapping


def read_preset(path) -> dict:
    """A validated preset mapping (format, version, model_fingerprint, methods with method/fixed/set). A bench
    config resolves every method entry against the same preset file, and parsing the mini preset (3,000 lines
    of YAML) took about a second each time, so the same file content is parsed once per process; callers get
    their own copy."""
    import copy

    path = Path(path)
    try:  # keyed by content: a rewrite within the file system's timestamp granularity is still seen
        key = (str(path.resolve()), file_sha256(path))
    except OSError:
        key = None  # read_mapping below says what is wrong with the path
    if key in _READ:
        return copy.deepcopy(_READ[key])
    data = _read_preset(path)
    if key is not None:
        _READ[key] = copy.deepcopy(data)
    return data


def _read_preset(path: Path) -> dict:
    from .utils.io import read_mapping

    data = read_mapping(path, "preset file")
    if data.get("format") != FORMAT:
        raise UserError(f"{path} is not an igmu preset file (no 'format: {FORMAT}'); write one with igmu calibrate")
    if data.get("version") != VERSION:
        raise UserError(f"preset file {path} has version {data.get('version')!r}; this igmu reads version {VERSION}")
    if not isinstance(data.get("model_fingerprint"), str):
        raise UserError(f"preset file {path} has no model_fingerprint")
    methods = data.get("methods")
    if not isinstance(methods, dict) or not methods:
        raise UserError(f"preset file {path} has no methods")
    for label, e in methods.items():
        if not (isinstance(e, dict) and isinstance(e.get("method"), str) and isinstance(e.get("set", {}), dict)
                and isinstance(e.get("fixed", {}), dict)):
            raise UserError(f"preset file {path}: entry {label!r} needs method (a name), set and fixed (mappings)")
    return data


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_model(preset: dict, path, model: str, fingerprint: str | None = None) -> str:
    """UserError unless the preset was calibrated on this model (same files). Returns the fingerprint."""
    from .models.load import model_hash, resolve_model

    fp = fingerprint or model_hash(resolve_model(model))
    if fp != preset["model_fingerprint"]:
        raise UserError(f"preset {path} was calibrated for another model ({preset.get('model', '?')}, fingerprint "
                        f"{preset['model_fingerprint'][:12]}), not {model} (fingerprint {fp[:12]}); calibrate this "
                        f"model with igmu calibrate, or use --preset published")
    return fp


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def preset_entry(preset: dict, path, method, user_values: dict) -> tuple[str, dict]:
    """(label, entry) of the preset entry for `method` (an Eraser) whose fixed options equal the run's:
    the user's value where given, else the method's default."""
    defaults = {k: f.default for k, f in method.Config.model_fields.items()}
    mine = {label: e for label, e in preset["methods"].items() if e["method"] == method.name}
    if not mine:
        raise UserError(f"preset {path} has no entry for method {method.name!r} (it covers: "
                        f"{', '.join(sorted(preset['methods']))}); calibrate it with igmu calibrate --methods "
                        f"{method.name}, or use --preset published")
    for label, e in mine.items():
        fixed = e.get("fixed") or {}
        if all(_same(user_values.get(k, defaults.get(k)), v) for k, v in fixed.items()):
            return label, e
    run = ", ".join(f"{k}={user_values.get(k, defaults.get(k))}" for k in sorted({k for e in mine.values()
                                                                                   for k in e.get("fixed") or {}}))
    have = "; ".join(f"{lb} ({', '.join(f'{k}={v}' for k, v in (e.get('fixed') or {}).items()) or 'no fixed options'})"
                     for lb, e in mine.items())
    raise UserError(f"preset {path} has no {method.name} entry for {run}; its {method.name} entries: {have}")


def resolve_preset(spec: str | None, model: str, method, user_values: dict,
                   fingerprint: str | None = None) -> PresetChoice | None:
    """The preset values for one erasure: None without a preset, PUBLISHED for the published defaults, else the
    matching entry of the preset file (checked against the model)."""
    if spec is None:
        return None
    if str(spec).strip() == PUBLISHED:
        return PresetChoice(PUBLISHED)
    path = Path(spec)
    preset = read_preset(path)
    fp = check_model(preset, path, model, fingerprint)
    label, e = preset_entry(preset, path, method, user_values)
    unknown = [k for k in e.get("set", {}) if k not in method.Config.model_fields]
    if unknown:
        raise UserError(f"preset {path}, entry {label!r}: method {method.name} has no option {unknown[0]!r} "
                        f"(a preset from another igmu version? recalibrate)")
    return PresetChoice(str(path), label, dict(e.get("set", {})), file_sha256(path), fp)
