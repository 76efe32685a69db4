"""Pre-generated images: three layouts that `igmu evaluate --images DIR --layout L` scores.

igmu (the IGMU paper's released layout, github.com/ryliu68/IGMU dataset/):

    DIR/<Concept>/forgot/<Method>/<i>_<j>_<k>.png              forget prompts: forgot.json
    DIR/<Concept>/remove_word/<Method>/<i>_<j>_<k>.png         the same prompts without the concept: retain.json
    DIR/<Concept>/unrelated/<Method>/[<Category>/]<i>_<j>_<k>.png   other concepts' prompts: retain.json
    DIR/../Benchmarking_prompts/{forgot,retain}.json           {concept key: {group: [prompt, ...]}}

  i: the group's index in the prompt file (file order), j: the prompt's index in its group, k: the image (the
  paper generates 5 per prompt); under unrelated/, IGMU keeps each group's images in a folder named after the
  group (Airplane/2_0_0.png: group 2 of retain.json is Airplane). The original model is the method folder ORG.
  The concept folder maps to its prompt-file key by name: Nudity -> nudity, Church -> object_church,
  VanGogh -> style_vangogh (a key's kind prefix is optional). Everything is discovered from the tree and every
  file present is scored: n is the number of files.

igmu-task (igmu's own, for one task):

    DIR/<task name>/{forget,retain}.json                     DataIGM prompt files {task: {group: [prompt, ...]}}
    DIR/<task name>/<forget|retain>/<method>/<i>_<j>_<k>.png

folder (generic):

    DIR/<set>/<method>/*.png  and a prompts file (--prompts: CSV with columns file,prompt, or JSON {file: prompt})
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..tasks.released import match_key  # noqa: F401  (the released prompt files' keys: one rule for tasks and layouts)

_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.(png|jpg|jpeg)$", re.I)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")
RELEASED_SETS = {"forgot": "forgot", "remove_word": "retain", "unrelated": "retain"}  # set folder -> prompt file
ORIGINAL = "ORG"


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def humanize(name: str) -> str:
    """'VanGogh' -> 'van gogh', 'object_church' -> 'object church'."""
    return " ".join(re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").split()).lower()


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise UserError(f"cannot read image {path} ({msg}); remove or replace it") from None


def file_key(path: Path) -> str:
    return "file-" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _json_file(path: Path, what: str) -> dict:
    from ..utils.validate import load_json

    if not path.is_file():
        raise UserError(f"layout mismatch: {path} is missing ({what})")
    data = load_json(path, "prompt file")
    if not isinstance(data, dict):
        raise UserError(f"layout mismatch: {path} must be a JSON object {{concept: {{group: [prompt, ...]}}}}")
    return data


def _groups(data, path: Path, key: str) -> dict[str, list[str]]:
    groups = data.get(key)
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise UserError(f"layout mismatch: {path} must hold {{{key!r}: {{group: [prompt, ...]}}}}")
    return {str(g): [str(p) for p in ps] for g, ps in groups.items()}


# ------------------------------------------------------------------------------------------ released layout

@dataclass
class Item:
    concept: str
    set: str
    method: str
    group: str
    prompt: str
    i: int
    j: int
    k: int
    path: Path


class ReleasedLayout:
    """The IGMU paper's released layout (module docstring): concepts, sets, methods and prompts from the tree."""

    def __init__(self, root, prompts_dir=None, only: list[str] | None = None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"--images {root} is not a folder")
        self.prompts_dir = Path(prompts_dir).expanduser() if prompts_dir else self.root.parent / "Benchmarking_prompts"
        if not self.prompts_dir.is_dir():
            raise UserError(f"no Benchmarking_prompts folder at {self.prompts_dir} (forgot.json and retain.json, "
                            "beside the images as in IGMU's dataset/); pass --prompts DIR")
        self.concepts = sorted(p.name for p in self.root.iterdir()
                               if p.is_dir() and any((p / s).is_dir() for s in RELEASED_SETS))
        if not self.concepts:
            raise UserError(f"--images {root} has no concept folder with forgot/, remove_word/ or unrelated/ in it; "
                            "expected <Concept>/forgot/<Method>/<i>_<j>_<k>.png (IGMU's released layout)")
        if only:
            missing = [c for c in only if c.lower() not in {x.lower() for x in self.concepts}]
            if missing:
                raise UserError(f"--concept {missing[0]!r} is not in {root} (concepts: {', '.join(self.concepts)})")
            self.concepts = [c for c in self.concepts if c.lower() in {x.lower() for x in only}]
        self._files: dict[str, dict] = {}
        self.keys: dict[str, str] = {}
        self.prompts: dict[str, dict[str, dict[str, list[str]]]] = {}  # concept -> prompt file -> groups
        self.items: dict[str, list[Item]] = {}
        for c in self.concepts:
            self.items[c] = self._scan(c)

    def _prompt_file(self, which: str) -> tuple[Path, dict]:
        if which not in self._files:
            path = self.prompts_dir / f"{which}.json"
            self._files[which] = _json_file(path, f"the {which} prompts of IGMU's Benchmarking_prompts")
        return self.prompts_dir / f"{which}.json", self._files[which]

    def _scan(self, concept: str) -> list[Item]:
        cdir = self.root / concept
        items = []
        for set_name in (s for s in RELEASED_SETS if (cdir / s).is_dir()):
            path, data = self._prompt_file(RELEASED_SETS[set_name])
            key = match_key(concept, list(data))
            if key is None:
                raise UserError(f"concept folder {concept!r} has no prompts in {path} (keys: {', '.join(data)}); "
                                "rename the folder or pass --prompts DIR")
            self.keys.setdefault(concept, key)
            groups = _groups(data, path, key)
            self.prompts.setdefault(concept, {})[RELEASED_SETS[set_name]] = groups
            names = list(groups)
            methods = sorted((p for p in (cdir / set_name).iterdir() if p.is_dir()),
                             key=lambda p: (p.name != ORIGINAL, p.name.lower()))
            if not methods:
                raise UserError(f"{cdir / set_name} has no method folders; expected {set_name}/<Method>/<i>_<j>_<k>.png")
            for mdir in methods:
                files = [(f, None) for f in mdir.iterdir() if f.is_file() and not f.name.startswith(".")]
                for sub in (p for p in mdir.iterdir() if p.is_dir()):
                    files += [(f, sub.name) for f in sub.iterdir() if f.is_file() and not f.name.startswith(".")]
                files = [(f, g) for f, g in files if f.suffix.lower() in IMAGE_EXTS]
                if not files:
                    raise UserError(f"method folder {mdir} is empty; expected images named <i>_<j>_<k>.png")
                for f, sub in sorted(files, key=lambda x: (x[1] or "", x[0].name)):
                    m = _NAME.match(f.name)
                    if not m:
                        raise UserError(f"layout mismatch: {f} is not named <group>_<prompt>_<image>.png")
                    i, j, k = (int(x) for x in m.groups()[:3])
                    if i >= len(names) or j >= len(groups[names[i]]):
                        raise UserError(f"layout mismatch: {f} names group {i} prompt {j}, which {key!r} of "
                                        f"{path.name} does not have")
                    if sub is not None and _norm(sub) != _norm(names[i]):
                        raise UserError(f"layout mismatch: {f} is in folder {sub!r} but group {i} of {key!r} in "
                                        f"{path.name} is {names[i]!r}")
                    items.append(Item(concept, set_name, mdir.name, names[i], groups[names[i]][j], i, j, k, f))
        return items

    def kind(self, concept: str) -> str:
        key = self.keys.get(concept, concept)
        if "nud" in _norm(concept) or "nud" in _norm(key):
            return "unsafe"
        return "style" if key.lower().startswith("style") else "object"

    def concept_text(self, concept: str) -> str:
        return "nudity" if self.kind(concept) == "unsafe" else humanize(concept)

    def context(self, concept: str) -> list[str]:
        """Zero-shot alternatives: the concept's unrelated groups (retain.json) and the other concepts."""
        own = _norm(concept)
        groups = [humanize(g) for g in self.prompts.get(concept, {}).get("retain", {})
                  if self.kind(concept) == "object" and _norm(g) != own]
        others = [self.concept_text(c) for c in self.concepts if c != concept]
        out = list(dict.fromkeys(groups + others))
        return out if len(out) >= 2 else out + ["a photo", "a painting"][:2 - len(out)]


# ------------------------------------------------------------------------------------------ folder layout

class FolderLayout:
    """DIR/<set>/<method>/*.png with an optional prompts file (CSV file,prompt or JSON {file: prompt})."""

    def __init__(self, root, concept: str | None, prompts_file=None):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserError(f"--images {root} is not a folder")
        if not concept:
            raise UserError("--layout folder needs --concept NAME: the concept the judge looks for (e.g. nudity)")
        self.concepts = [concept]
        self.prompt_map = _read_prompt_map(prompts_file) if prompts_file else None
        sets = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not sets:
            raise UserError(f"--images {root} has no set folders; expected <set>/<method>/*.png")
        items = []
        for sdir in sets:
            methods = sorted(p for p in sdir.iterdir() if p.is_dir())
            if not methods:
                raise UserError(f"{sdir} has no method folders; expected {sdir.name}/<method>/*.png")
            for mdir in methods:
                files = sorted(f for f in mdir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
                if not files:
                    raise UserError(f"method folder {mdir} is empty; expected images (*.png, *.jpg)")
                for k, f in enumerate(files):
                    prompt = ""
                    if self.prompt_map is not None:
                        rel = f"{sdir.name}/{mdir.name}/{f.name}"
                        prompt = next((self.prompt_map[x] for x in (rel, f"{sdir.name}/{f.name}", f.name)
                                       if x in self.prompt_map), None)
                        if prompt is None:
                            raise UserError(f"the prompts file has no entry for {rel} (nor {f.name})")
                    items.append(Item(concept, sdir.name, mdir.name, "", prompt, 0, 0, k, f))
        self.items = {concept: items}
        self.keys = {concept: concept}

    def kind(self, concept: str) -> str:
        return "unsafe" if "nud" in _norm(concept) else "object"

    def concept_text(self, concept: str) -> str:
        return "nudity" if self.kind(concept) == "unsafe" else " ".join(concept.split())

    def context(self, concept: str) -> list[str]:
        return ["a photo", "a painting"]


def _read_prompt_map(path) -> dict[str, str]:
    from ..utils.validate import parse_json, read_csv_rows, read_text

    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"--prompts {path}: no such file (for --layout folder: a CSV with columns file,prompt or "
                        "JSON {file: prompt})")
    text = read_text(p, "--prompts")
    if p.suffix.lower() == ".json":
        data = parse_json(text, f"--prompts {path}")
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UserError(f"--prompts {path} must be a JSON object {{file: prompt}}")
        return {str(k): v for k, v in data.items()}
    rows = read_csv_rows(text, f"--prompts {path}")
    if not rows or not {"file", "prompt"} <= {c.strip().lower() for c in rows[0]}:
        raise UserError(f"--prompts {path} must be a CSV with columns file,prompt")
    cols = {c.strip().lower(): c for c in rows[0]}
    return {r[cols["file"]].strip(): r[cols["prompt"]] for r in rows}


# ------------------------------------------------------------------------------------------ igmu-task layout

def _task_prompt_file(path: Path, concept: str) -> dict[str, list[str]]:
    data = _json_file(path, f"the DataIGM prompt file of {concept!r}")
    groups = data.get(concept, data)
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise UserError(f"layout mismatch: {path} must be {{{concept!r}: {{group: [prompt, ...]}}}}")
    return {g: [str(p) for p in ps] for g, ps in groups.items()}


class TaskLayout:
    """igmu's own layout for one task (module docstring). Every image present is scored: the images of a
    prompt are the k present in the method's folder, and the original's folder must hold the same ones."""

    def __init__(self, root: Path, concept: str, method: str, original: str = "original"):
        self.root, self.concept = Path(root), concept
        if not self.root.is_dir():
            raise UserError(f"--images {root} is not a folder")
        if not any(self.root.iterdir()):
            raise UserError(f"--images {root} is empty; expected <task>/<forget|retain>/<method>/<i>_<j>_<k>.png")
        cdir = self.root / concept
        if not cdir.is_dir():
            have = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise UserError(f"layout mismatch: no folder {concept!r} in {root} (the task's name); found: "
                            f"{', '.join(have) or 'no folders'}")
        self.prompts = {s: _task_prompt_file(cdir / f"{s}.json", concept) for s in ("forget", "retain")}
        self.files: dict[str, dict[tuple[str, int], Path]] = {}
        for role, m in (("original", original), ("unlearned", method)):
            index: dict[tuple[str, int], Path] = {}
            for s, groups in self.prompts.items():
                d = cdir / s / m
                if not d.is_dir():
                    raise UserError(f"layout mismatch: {d} is missing (images of method {m!r} for the {s} prompts)")
                names = list(groups)
                files = [f for f in d.iterdir() if f.is_file()]
                if not files:
                    raise UserError(f"{d} is empty; expected images named <i>_<j>_<k>.png")
                for f in files:
                    mt = _NAME.match(f.name)
                    if not mt:
                        raise UserError(f"layout mismatch: {f} is not named <group>_<prompt>_<image>.png")
                    i, j, k = (int(x) for x in mt.groups()[:3])
                    if i >= len(names) or j >= len(groups[names[i]]):
                        raise UserError(f"layout mismatch: {f} names group {i} prompt {j}, which {s}.json does not have")
                    index[(groups[names[i]][j], k)] = f
            self.files[role] = index

    def task_prompts(self, task) -> dict:
        """The task's prompt sets replaced by the layout's, keeping `expect` where the task knows the prompt;
        `stripped` is dropped (its images would have to be generated)."""
        known = {r.prompt: r for groups in task.prompts.values() for recs in groups.values() for r in recs}
        out = {}
        for s, groups in self.prompts.items():
            out[s] = {g: [{"prompt": p, "expect": list(known[p].expect) if p in known else []} for p in ps]
                      for g, ps in groups.items()}
        if "explicit" not in out["forget"]:
            first = next(iter(out["forget"]), None)
            if first is None:
                raise UserError("layout mismatch: forget.json has no group")
            out["forget"]["explicit"] = out["forget"].pop(first)
        return out

    def seeds(self, seed0: int):
        """prompt -> the seeds of the images present for it in the method's folder (seed0 + k)."""
        ks: dict[str, list[int]] = {}
        for (p, k) in self.files["unlearned"]:
            ks.setdefault(p, []).append(k)
        return lambda prompt: [seed0 + k for k in sorted(ks.get(prompt, []))]

    def source(self, role: str, seed0: int):
        def get(pairs):
            imgs, keys = [], []
            for p, s in pairs:
                f = self.files[role].get((p, s - seed0))
                if f is None:
                    raise UserError(f"layout mismatch: no image {s - seed0} of prompt {p!r} for the {role} model "
                                    "(the method's folder has it)")
                imgs.append(read_image(f))
                keys.append(file_key(f))
            sizes = {i.shape for i in imgs}
            if len(sizes) > 1:
                raise UserError(f"images of mixed sizes under {self.root}: {sorted(s[:2] for s in sizes)}; "
                                "resize them to one size first")
            return (np.stack(imgs) if imgs else np.zeros((0, 1, 1, 3), np.uint8)), keys
        return get
