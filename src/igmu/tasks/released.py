"""Tasks from the IGMU paper's released prompt files (github.com/ryliu68/IGMU, folder dataset/):

    DATASET/Benchmarking_prompts/forgot.json   {concept key: {group: [prompt, ...]}}   prompts naming the concept
    DATASET/Benchmarking_prompts/retain.json   {concept key: {group: [prompt, ...]}}   prompts that must survive
    DATASET/Training_images_demo/<Concept>/{train,test}/<class>/   images for the CLIP judge heads

Keys: nudity, style_vangogh, object_church, object_parachute (task spec igmu:KEY; the concept folder names of
the released images, Nudity, VanGogh, Church, Parachute, match too). `released_task` turns one key into a Task:

- Every group of forgot.json (nudity: girl, boy, woman, man, person; Van Gogh: thematic, landscape, ...) varies
  the subject, not the phrasing of the concept, so all are explicit forget prompts: they are merged, in file
  order, into forget.explicit (igmu counts every other forget group as a robustness probe).
- nudity and style_* ("remove_word" concepts): retain.json holds the same groups as forgot.json with the
  concept's words removed, prompt for prompt. Each forget prompt's `stripped` is its retain.json twin (so
  CSDR and the stripped-prompt FID use the paper's own pairs), and the retain set is those prompts.
  Nudity is unsafe and carrier-bound: judge nudenet, carrier "person"; every forget and retain prompt
  expects a person (judged by clip-person with the evaluation's CLIP). Van Gogh is a style with nothing
  labelling its retain prompts' content, so they carry no expectation: its preservation is the LPIPS
  distance of their images to the original model's, and the quality aspect's FID.
- object_*: retain.json holds other objects' prompts in groups named after them (Cat, Airplane, ...). Each
  retain prompt expects its group's object, judged zero-shot by the evaluation's CLIP (carrier judge
  `clip`), since a head trained on church/other cannot tell a cat from a chair. `stripped` is the forget
  prompt with the object's words removed (prompts.strip_concept, as IGMU's CSDR script intends).
- The judge of the target: nudenet for nudity, else `judge` (a bench config's task_judges: clip-head:DIR,
  a head trained by `igmu judge train` on Training_images_demo/<Concept>), else zero-shot `clip`.
- images_per_prompt 5: the released images are <group>_<prompt>_<k>.png with k = 0..4.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UserError

PROMPTS_DIR = "Benchmarking_prompts"
FILES = ("forgot", "retain")
# what the paper's four concepts are in igmu's terms: (kind, the target's words in the prompts)
KNOWN = {"nudity": ("unsafe", "nudity"), "style_vangogh": ("style", "Van Gogh"),
         "object_church": ("object", "church"), "object_parachute": ("object", "parachute")}
ENV_DATASET = "IGMU_DATASET"
IMAGES_PER_PROMPT = 5


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def match_key(concept: str, keys: list[str]) -> str | None:
    """The prompt-file key of a concept name: equal names, or a key whose kind prefix (object_, style_, ...)
    dropped gives the name (Church -> object_church); None when none matches."""
    c = _norm(concept)
    hits = [k for k in keys if _norm(k) == c or ("_" in k and _norm(k.split("_", 1)[1]) == c)]
    if len(hits) > 1:
        raise UserError(f"concept folder {concept!r} matches several prompt-file keys ({', '.join(hits)}); rename it")
    return hits[0] if hits else None


def prompts_dir(dataset) -> Path:
    """DATASET/Benchmarking_prompts (DATASET may also be that folder itself); one line when it is missing."""
    d = Path(str(dataset)).expanduser()
    if not d.is_dir():
        raise UserError(f"IGMU dataset folder {d} does not exist; give the IGMU repository's dataset/ folder "
                        f"(with {PROMPTS_DIR}/forgot.json and retain.json)")
    p = d if (d / "forgot.json").is_file() else d / PROMPTS_DIR
    if not (p / "forgot.json").is_file() or not (p / "retain.json").is_file():
        raise UserError(f"IGMU dataset folder {d} has no {PROMPTS_DIR}/forgot.json and retain.json; give the IGMU "
                        "repository's dataset/ folder")
    return p


def read_prompt_file(path: Path) -> dict[str, dict[str, list[str]]]:
    """A released prompt file {concept key: {group: [prompt, ...]}}, checked."""
    from ..utils.validate import load_json

    data = load_json(path, "prompt file")
    ok = isinstance(data, dict) and all(isinstance(g, dict) and all(isinstance(ps, list) and
                                                                    all(isinstance(p, str) for p in ps)
                                                                    for ps in g.values()) for g in data.values())
    if not ok:
        raise UserError(f"{path} must be a JSON object {{concept: {{group: [prompt, ...]}}}} (IGMU's released format)")
    return data


def released_keys(dataset) -> list[str]:
    return list(read_prompt_file(prompts_dir(dataset) / "forgot.json"))


def released_task(concept: str, dataset, judge: str | None = None, prompts_per_group: int | None = None,
                  images_per_prompt: int = IMAGES_PER_PROMPT):
    """The Task of one released concept (module docstring); `prompts_per_group`: only the first N prompts of
    every group of both files (quick runs)."""
    from .prompts import concept_phrases, strip_concept
    from .task import task_from_dict

    pdir = prompts_dir(dataset)
    forgot, retain = (read_prompt_file(pdir / f"{f}.json") for f in FILES)
    key = match_key(concept, list(forgot))
    if key is None:
        raise UserError(f"no concept {concept!r} in {pdir / 'forgot.json'} (concepts: {', '.join(forgot)})")
    if key not in retain:
        raise UserError(f"concept {key!r} of forgot.json has no prompts in {pdir / 'retain.json'}")
    if prompts_per_group is not None and prompts_per_group < 1:
        raise UserError(f"prompts per group must be at least 1, got {prompts_per_group}")
    n = prompts_per_group
    fg = {g: ps[:n] for g, ps in forgot[key].items()}
    rg = {g: ps[:n] for g, ps in retain[key].items()}
    kind, target = KNOWN.get(key) or (("unsafe", key) if "nud" in _norm(key) else
                                      ("style" if key.lower().startswith("style_") else "object",
                                       key.split("_", 1)[-1].replace("_", " ")))
    phrases = concept_phrases(target, kind)
    twins = kind in ("unsafe", "style") and {g: len(ps) for g, ps in fg.items()} == {g: len(ps) for g, ps in rg.items()}
    person = ["person"] if kind == "unsafe" else []
    explicit = []
    for g, ps in fg.items():
        for j, p in enumerate(ps):
            explicit.append({"prompt": p, "expect": person, "stripped": rg[g][j] if twins else strip_concept(p, phrases)})
    if kind == "object":
        retain_sets = {g: [{"prompt": p, "expect": [g.lower()]} for p in ps] for g, ps in rg.items()}
    else:
        retain_sets = {g: [{"prompt": p, "expect": person} for p in ps] for g, ps in rg.items()}
    data = {"name": key, "category": {"kind": kind}, "targets": [target], "anchor": None,
            "judge": "nudenet" if kind == "unsafe" and judge is None else (judge or "clip"),
            "carrier": "person" if kind == "unsafe" else None,
            "carrier_judge": "clip-person" if kind == "unsafe" else ("clip" if kind == "object" else None),
            "prompts": {"forget": {"explicit": explicit}, "retain": retain_sets},
            "images_per_prompt": images_per_prompt}
    return task_from_dict(data, f"IGMU concept {key!r} ({pdir})")


def _source(name: str):
    """Task source igmu:KEY (igmu evaluate --task igmu:nudity): the dataset folder from $IGMU_DATASET."""
    dataset = os.environ.get(ENV_DATASET, "").strip()
    if not dataset:
        raise UserError(f"task igmu:{name} reads IGMU's released prompt files: export {ENV_DATASET}=PATH (the IGMU "
                        f"repository's dataset/ folder, with {PROMPTS_DIR}/)")
    return released_task(name, dataset)


def _names() -> list[str]:
    dataset = os.environ.get(ENV_DATASET, "").strip()
    return released_keys(dataset) if dataset else list(KNOWN)
