"""Score the IGMU paper's released demo images (github.com/ryliu68/IGMU, dataset/Benchmarking_images_demo) with
`igmu evaluate --layout igmu`: the Nudity concept with NudeNet, one row per method folder (ORG and the ten
methods), plus the original's remove_word images. Nothing of the paper's repository is committed: the images
are copied from a local git copy of it into a temporary folder and deleted afterwards.

    python scripts/bench_igmu_demo.py --repo /path/to/IGMU            # a clone, or a bare git directory
    python scripts/bench_igmu_demo.py --repo ... --out out/bench/igmu_demo.json
    python scripts/bench_igmu_demo.py --repo ... --strip-check    # igmu's stripping vs the paper's retain.json

Prints a Markdown table (figures for docs/evaluation.md) and writes the JSON results. Two NudeNet presets are
reported (igmu's default: 5 sexual exposed classes at score >= 0.6; UnlearnDiffAtk's: 9 exposed classes at
>= 0.45); the second reuses the cached detections.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

PARTS = ("dataset/Benchmarking_images_demo", "dataset/Benchmarking_prompts")


def extract(repo: Path, dest: Path) -> Path:
    """Copy the demo images and prompts out of a git repository (work tree or bare) into dest."""
    git = ["git", "-C", str(repo)]
    if (repo / "dataset" / "Benchmarking_images_demo").is_dir():  # a work tree: copy the files
        import shutil

        for p in PARTS:
            shutil.copytree(repo / p, dest / p)
    else:
        tar = dest / "demo.tar"
        with open(tar, "wb") as f:
            # (a mirror may lack blobs outside these folders; git names them on stderr, which is dropped)
            subprocess.run(git + ["archive", "--format=tar", "HEAD", *PARTS], stdout=f, stderr=subprocess.DEVNULL,
                           check=True)
        with tarfile.open(tar) as t:
            t.extractall(dest, filter="data")
        tar.unlink()
    pngs = list((dest / PARTS[0]).rglob("*.png"))
    pointers = [p for p in pngs if p.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n"]
    if not pngs or pointers:
        raise SystemExit(f"the demo images are not in {repo}: {len(pngs)} PNGs, {len(pointers)} of them not PNG "
                         "data (Git LFS pointers?)")
    return dest / PARTS[0]


def strip_check(prompts: Path) -> dict:
    """For the concepts whose retain.json holds the forget prompts without the concept (nudity, Van Gogh):
    how many of igmu's stripped forget prompts equal the paper's retain prompt of the same (i, j)."""
    from igmu.tasks.prompts import concept_phrases, strip_concept

    forgot = json.loads((prompts / "forgot.json").read_text())
    retain = json.loads((prompts / "retain.json").read_text())
    out = {}
    for key, concept, kind in (("nudity", "nudity", "unsafe"), ("style_vangogh", "Van Gogh", "style")):
        phrases = concept_phrases(concept, kind)
        pairs = [(f, r) for g in forgot[key] for f, r in zip(forgot[key][g], retain[key][g])]
        diff = [(f, strip_concept(f, phrases), r) for f, r in pairs if strip_concept(f, phrases) != r]
        out[key] = {"prompts": len(pairs), "equal": len(pairs) - len(diff), "different": diff}
    return out


def main():
    import warnings

    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="a local git copy of ryliu68/IGMU")
    ap.add_argument("--out", type=Path, default=Path("out/bench/igmu_demo.json"))
    ap.add_argument("--strip-check", action="store_true", help="only compare igmu's stripping with retain.json")
    a = ap.parse_args()
    if a.strip_check:
        with tempfile.TemporaryDirectory() as tmp:
            images = extract(a.repo, Path(tmp))
            res = strip_check(images.parent / "Benchmarking_prompts")
        for key, r in res.items():
            print(f"{key}: {r['equal']} of {r['prompts']} stripped forget prompts equal retain.json's")
            for f, got, want in r["different"]:
                print(f"  {f!r} -> {got!r}; retain.json: {want!r}")
        return

    from PIL import Image

    from igmu.evaluation.cache import Cache
    from igmu.evaluation.judges import get_judge
    from igmu.evaluation.layout import ReleasedLayout, file_key
    from igmu.evaluation.layout_score import score_layout, summary_markdown

    commit = subprocess.run(["git", "-C", str(a.repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        images = extract(a.repo, Path(tmp))
        lay = ReleasedLayout(images, only=["Nudity"])
        cache = Cache(Path(tmp) / "cache")
        t0 = time.perf_counter()
        runs = {spec: score_layout(lay, "igmu", [spec], None, cache) for spec in ("nudenet", "nudenet:unlearndiffatk")}
        seconds = round(time.perf_counter() - t0, 1)
        sizes = sorted({Image.open(it.path).size for it in lay.items["Nudity"]})
        j = get_judge("nudenet")  # the detections cached by the run above
        top = j.scores([cache.get_judge(j.fingerprint(), file_key(it.path)) for it in lay.items["Nudity"]])
        per_method: dict[str, list[float]] = {}
        for it, s in zip(lay.items["Nudity"], top):
            per_method.setdefault(f"{it.set}/{it.method}", []).append(round(s, 3))
    rows = []
    for r in runs["nudenet"]["rows"]:
        u = next(x for x in runs["nudenet:unlearndiffatk"]["rows"] if (x["set"], x["method"]) == (r["set"], r["method"]))
        rows.append({"set": r["set"], "method": r["method"], "n": r["n"], "nudenet": r["target_shown"],
                     "nudenet_unlearndiffatk": u["target_shown"],
                     "top_score_per_image": per_method[f"{r['set']}/{r['method']}"]})
    out = {"repo_commit": commit, "concept": "Nudity", "image_sizes": sizes, "seconds_both_presets": seconds,
           "judge_cards": {k: v["concepts"]["Nudity"]["judge"]["card"] for k, v in runs.items()}, "rows": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1, default=str))
    print(summary_markdown(runs["nudenet"]))
    print(f"\nIGMU {commit[:7]}, Nudity, images {sizes}, {seconds} s for both presets\n")
    print("| set / method | n | nudity shown, nudenet (5 classes >= 0.6) [95% CI] | nudenet:unlearndiffatk "
          "(9 classes >= 0.45) | top score of the 5 default classes, per image |")
    print("|---|---|---|---|---|")
    for r in rows:
        f = lambda x: f"{x['value']:.0%} [{x['lo']:.0%}, {x['hi']:.0%}]"  # noqa: E731
        print(f"| {r['set']} / {r['method']} | {r['n']} | {f(r['nudenet'])} | {f(r['nudenet_unlearndiffatk'])} | "
              f"{', '.join(f'{s:.2f}' for s in r['top_score_per_image'])} |")


if __name__ == "__main__":
    main()
