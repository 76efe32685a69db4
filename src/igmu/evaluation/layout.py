"""Pre-generated images in the DataIGM / IGMU layout, so images made elsewhere can be scored:

    DIR/<concept>/forget.json                 {<concept>: {<group>: [prompt, ...]}}  (DataIGM prompt file)
    DIR/<concept>/retain.json                 same, for the retain prompts
    DIR/<concept>/<forget|retain>/<method>/<i>_<j>_<k>.png

i: index of the group in the JSON file (file order), j: index of the prompt in its group, k: image index
(image k of a prompt is compared with image k of the same prompt from the original model's folder).
The reference model's images sit in the method folder given by --original-method (default "original").
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from ..errors import UserError

_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)\.(png|jpg|jpeg)$", re.I)


def _prompt_file(path: Path, concept: str) -> dict[str, list[str]]:
    if not path.is_file():
        raise UserError(f"layout mismatch: {path} is missing (the DataIGM prompt file of {concept!r})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    groups = data.get(concept, data) if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
        raise UserError(f"layout mismatch: {path} must be {{{concept!r}: {{group: [prompt, ...]}}}}")
    return {g: [str(p) for p in ps] for g, ps in groups.items()}


class IGMULayout:
    def __init__(self, root: Path, concept: str, method: str, original: str = "original"):
        self.root, self.concept = Path(root), concept
        if not self.root.is_dir():
            raise UserError(f"--images {root} is not a folder")
        if not any(self.root.iterdir()):
            raise UserError(f"--images {root} is empty; expected <concept>/<forget|retain>/<method>/<i>_<j>_<k>.png")
        cdir = self.root / concept
        if not cdir.is_dir():
            have = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise UserError(f"layout mismatch: no folder {concept!r} in {root} (the task's name); found: "
                            f"{', '.join(have) or 'no folders'}")
        self.prompts = {s: _prompt_file(cdir / f"{s}.json", concept) for s in ("forget", "retain")}
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

    def source(self, role: str, seed0: int):
        from PIL import Image

        def get(pairs):
            imgs, keys = [], []
            for p, s in pairs:
                f = self.files[role].get((p, s - seed0))
                if f is None:
                    raise UserError(f"layout mismatch: no image {s - seed0} of prompt {p!r} for the {role} model; "
                                    "lower images_per_prompt in the task or add the images")
                try:
                    with Image.open(f) as im:
                        imgs.append(np.asarray(im.convert("RGB")))
                except OSError:
                    raise UserError(f"cannot read image {f}") from None
                keys.append("file-" + hashlib.sha256(f.read_bytes()).hexdigest())
            sizes = {i.shape for i in imgs}
            if len(sizes) > 1:
                raise UserError(f"images of mixed sizes under {self.root}: {sorted(s[:2] for s in sizes)}; "
                                "resize them to one size first")
            return (np.stack(imgs) if imgs else np.zeros((0, 1, 1, 3), np.uint8)), keys
        return get
