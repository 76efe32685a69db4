"""The SD1.5-sized float16 checks on the CPU (issue: "real models on real hardware").

On an SD1.5-sized pipeline with random weights saved in float16 (the way checkpoints are distributed):
  1. `igmu generate --device cpu` writes a 512 x 512 image (loaded in float32, the CPU default), and
     again with --dtype bfloat16;
  2. UCE erases "Van Gogh", `igmu export` merges it, and the merged folder loads in plain diffusers
     (a separate Python process without igmu) with exactly the artifact's weights;
  3. generating from the UCE artifact works;
  4. ESD runs one iteration (float32, and bfloat16 with float32 master weights and autocast).
Computing in float16 on the CPU works too but is emulated and about 20 times slower than float32 here
(one SD1.5 UNet forward at 256 px, batch 2: 42 s in float32, 46 s in bfloat16, 832 s in float16, on 2
shared cores), so these CPU checks compute in float32 and bfloat16; float16 computation is the GPU
check's (scripts/gpu_check.sh).
Each step runs the `igmu` command in its own process; the table gives its wall time and peak RSS.

    python scripts/check_fp16_sd15.py --work out/fp16-sd15
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN_DIFFUSERS = """
import json, sys, torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], dtype=torch.float32)
tensors = load_file(sys.argv[2] + "/weights.safetensors")
params = dict(pipe.unet.named_parameters())
same = all(torch.equal(params[k.split(".", 1)[1]].detach(), v.to(torch.float32)) for k, v in tensors.items())
print(json.dumps({"class": type(pipe).__name__, "edited_tensors": len(tensors), "equal": same}))
"""


def run(args: list[str], env: dict) -> dict:
    """`igmu ARGS` in its own process (through this script's --igmu mode, which reports its peak RSS)."""
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, __file__, "--igmu", *args], env=env, capture_output=True, text=True)
    out = {"command": "igmu " + " ".join(args), "exit": res.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "output": (res.stdout.strip().splitlines() or [""])[-1], "error": (res.stderr.strip().splitlines() or [""])[-1]}
    for line in res.stderr.splitlines():
        if line.startswith("peak_rss_mb="):
            out["peak_rss_gb"] = round(float(line.split("=")[1]) / 1024, 1)
    return out


def igmu_here(args: list[str]) -> int:
    from igmu.cli import app
    from igmu.utils.memory import peak_rss_mb

    try:
        code = app(args, standalone_mode=False) or 0  # click returns the exit code of typer.Exit (2: a UserError)
    finally:
        print(f"peak_rss_mb={peak_rss_mb():.0f}", file=sys.stderr)
    return code


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="out/fp16-sd15")
    ap.add_argument("--igmu", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.igmu is not None:
        return igmu_here(a.igmu)
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from PIL import Image

    from igmu.models.scale import save_scale_pipeline

    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    model = work / "sd15-random-fp16"  # the same folder scripts/bench_scale.py builds in its --work
    steps = []
    if not (model / "model_index.json").is_file():
        t0 = time.perf_counter()
        save_scale_pipeline("sd15", model, torch.float16)
        steps.append({"command": "build and save the SD1.5-sized pipeline in float16", "exit": 0,
                      "seconds": round(time.perf_counter() - t0, 1), "output": str(model)})
    from safetensors import safe_open

    dtypes = set()  # the dtype of every tensor as stored (the safetensors headers; configs need not name it)
    for f in sorted(model.glob("*/*.safetensors")):
        with safe_open(str(f), "pt") as g:
            dtypes |= {str(g.get_slice(k).get_dtype()) for k in g.keys()}

    def fresh(name):
        p = work / name
        if p.exists():
            import shutil

            shutil.rmtree(p)
        return str(p)

    gen = ["--prompt", "a photo of a cat", "-n", "1", "--steps", "2", "--device", "cpu"]
    steps.append(run(["generate", "--model", str(model), *gen, "--out", fresh("gen-fp32")], env))
    steps.append(run(["generate", "--model", str(model), *gen, "--dtype", "bfloat16", "--out", fresh("gen-bf16")], env))
    steps.append(run(["erase", "--model", str(model), "--method", "uce", "--target", "Van Gogh", "--device", "cpu",
                      "--out", fresh("uce")], env))
    steps.append(run(["export", str(work / "uce"), "--out", fresh("uce-merged")], env))
    plain = subprocess.run([sys.executable, "-c", PLAIN_DIFFUSERS, str(work / "uce-merged"), str(work / "uce")],
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, capture_output=True, text=True)
    steps.append({"command": "plain diffusers: StableDiffusionPipeline.from_pretrained(merged) (no igmu)",
                  "exit": plain.returncode, "seconds": None,
                  "output": (plain.stdout.strip().splitlines() or [""])[-1],
                  "error": (plain.stderr.strip().splitlines() or [""])[-1]})
    steps.append(run(["generate", "--model", str(work / "uce"), "--prompt", "a painting by Van Gogh", "-n", "1",
                      "--steps", "2", "--device", "cpu", "--out", fresh("gen-uce")], env))
    esd = ["erase", "--model", str(model), "--method", "esd", "--target", "Van Gogh", "--set", "iterations=1",
           "--set", "sample_steps=2", "--device", "cpu"]
    steps.append(run(esd + ["--out", fresh("esd")], env))
    steps.append(run(esd + ["--dtype", "bfloat16", "--out", fresh("esd-bf16")], env))

    checks = {
        "checkpoint saved in float16": dtypes == {"F16"},
        "generate --device cpu writes a 512x512 image": steps[-8]["exit"] == 0 and Image.open(
            work / "gen-fp32" / "images" / "0000_000.png").size == (512, 512),
        "generate --dtype bfloat16 on CPU writes a 512x512 image": steps[-7]["exit"] == 0 and Image.open(
            work / "gen-bf16" / "images" / "0000_000.png").size == (512, 512),
        "UCE erases": steps[-6]["exit"] == 0,
        "export merges": steps[-5]["exit"] == 0,
        "the export loads in plain diffusers with the artifact's weights": plain.returncode == 0
        and json.loads(plain.stdout.strip().splitlines()[-1])["equal"],
        "generating from the UCE artifact writes a 512x512 image": steps[-3]["exit"] == 0 and Image.open(
            work / "gen-uce" / "images" / "0000_000.png").size == (512, 512),
        "ESD runs one iteration (float32)": steps[-2]["exit"] == 0,
        "ESD runs one iteration (bfloat16, float32 master weights + autocast)": steps[-1]["exit"] == 0,
    } if all(s["exit"] == 0 for s in steps) else {}
    lines = ["| step | exit | seconds | peak RSS |", "|---|---|---|---|"]
    for s in steps:
        lines.append(f"| `{s['command'].replace(str(work) + '/', '')}` | {s['exit']} | {s['seconds'] or ''} | "
                     f"{str(s.get('peak_rss_gb', '')) + ' GB' if s.get('peak_rss_gb') else ''} |")
        if s["exit"]:
            lines.append(f"|   error: {s.get('error', '')} | | | |")
    lines += ["", *(f"- [{'x' if ok else ' '}] {name}" for name, ok in checks.items())]
    ok = bool(checks) and all(checks.values())
    lines.append(f"\n{'all checks pass' if ok else 'SOME CHECKS FAIL'} (CPU, {os.cpu_count()} cores visible)")
    (work / "checks.json").write_text(json.dumps({"steps": steps, "checks": checks}, indent=1))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
