"""What every method needs at Stable Diffusion 1.5 size: seconds per iteration, peak memory, parameters changed.

    python scripts/bench_scale.py --work out/scale                              # CPU, float32 and bfloat16
    python scripts/bench_scale.py --work out/scale --device cuda --dtypes bfloat16,float16 --latent 64

The model is an SD1.5-sized pipeline with random weights (igmu.models.scale: the real UNet, text encoder
and VAE configurations, CLIP's real tokenizer), saved in float16 like a distributed checkpoint and loaded
in each dtype under test. Every (method, dtype) runs in its own process (`igmu erase` through run_erase, so
peak memory is that process's own high-water mark, VmHWM; on CUDA also torch's peak allocation), for a
few iterations of its own loop (SCALE_BUDGET: the method's defaults except the step counts and the number
of images it draws for itself). Seconds per iteration is the median time between the loop's progress
ticks over its last iterations (the data the method draws first is not counted); a closed-form method has
no iterations and reports its whole erase time. The target is "Van Gogh" (two tokens), the anchor "a
painting".

--latent sets the latent side (default 16 on CPU: 128 px, so that a run takes minutes rather than hours on
2 shared cores; 64 is SD1.5's 512 px). Every weight shape is SD1.5's at any latent side; time and activation
memory grow with the latent area (roughly 16x from 16 to 64), so CPU figures at 16 are NOT figures at 512 px. A method whose estimated memory
(ESTIMATE_GB) exceeds the memory available is not run, and the table says so.
Prints one Markdown table (and writes --work/scale.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a few iterations of each method's own loop; the images/latents it draws for itself reduced to a handful
SCALE_BUDGET = {
    "esd": ["iterations=3", "sample_steps=3"],
    "uce": [],
    "fmn": ["iterations=3", "n_images=1", "sample_steps=3"],
    "conceptprune": ["samples=1", "sample_steps=3", "timesteps=2"],
    "spm": ["iterations=3", "sample_steps=3", "anchor_samples=2"],
    "mace": ["lora_steps=3", "n_images=1", "sample_steps=3", "n_prompts=4"],
    "negprompt": [],
    "sld": [],
    "rece": ["epochs=2"],
    "advunlearn": ["iterations=3", "warmup_iter=1", "attack_step=2", "sample_steps=3", "pool_size=1",
                   "retain_batch=2"],
    "receler": ["iterations=3", "advrs_iters=2", "sample_steps=3"],
    "ca": ["iterations=3", "n_images=2", "sample_steps=3", "batch_size=2"],
    "doco": ["iterations=4", "warm_up=1", "n_images=2", "sample_steps=3", "batch_size=2"],
    "sa": ["iterations=3", "n_images=2", "n_fisher=1", "fisher_timesteps=2", "sample_steps=3", "batch_size=2"],
    "salun": ["epochs=3", "forget_images=2", "retain_images=1", "sample_steps=3", "batch_size=2"],
    "erasediff": ["epochs=2", "forget_images=2", "retain_images=1", "sample_steps=3", "batch_size=2"],
    "scissorhands": ["epochs=3", "prune_num=1", "forget_images=2", "retain_images=1", "sample_steps=3",
                     "batch_size=2"],
    # methods III
    "speed": [], "cure": [], "adavd": [], "safree": [], "seot": [],
    "gloce": ["n_gen=1", "n_anchor=1", "sample_steps=12"],  # its features are collected after st_timestep (10)
    "sdd": ["iterations=3", "sample_steps=3"],
    "esd-lora": ["iterations=3", "sample_steps=3"],
    "taskvector": ["iterations=3", "images=2", "sample_steps=3", "batch_size=2"],
    "stereo": ["iterations=3", "ti_steps=2", "n_iterations=1", "gallery_images=1", "gallery_steps=3",
               "sample_steps=3"],
}
CLOSED_FORM = {"uce", "rece", "conceptprune", "negprompt", "sld", "speed", "cure", "adavd", "safree", "seot", "gloce"}
# rough peak memory (GB) at SD1.5 size in float32 on the CPU: the pipeline (4.3) plus what each method keeps
# (a trained UNet copy 3.4, its gradients 3.4, Adam's two moments 6.9, ...); used only to skip what cannot fit
ESTIMATE_GB = {"esd": 9, "fmn": 16, "sa": 22, "salun": 22, "erasediff": 33, "scissorhands": 26,
               "taskvector": 24, "stereo": 21}  # full UNet / all-but-cross-attention with Adam
TARGET, ANCHOR = "Van Gogh", "a painting"


def build(work: Path, latent: int) -> Path:
    """The SD1.5-sized pipeline saved in float16 (built once, shared with check_fp16_sd15.py), and a view of it
    whose UNet config defaults to `latent` (hard links to the same weight files; only unet/config.json
    differs, so every weight is the same)."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from igmu.models.scale import save_scale_pipeline

    native = work / "sd15-random-fp16"
    if not (native / "model_index.json").is_file():
        t0 = time.perf_counter()
        save_scale_pipeline("sd15", native, torch.float16, seed=0)
        print(f"built {native} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    cfg = json.loads((native / "unet" / "config.json").read_text())
    if latent == cfg["sample_size"]:
        return native
    view = work / f"sd15-random-{latent * 8}px-fp16"
    if not (view / "model_index.json").is_file():
        for f in native.rglob("*"):
            if f.is_file():
                dst = view / f.relative_to(native)
                dst.parent.mkdir(parents=True, exist_ok=True)
                if f.relative_to(native) == Path("unet/config.json"):
                    dst.write_text(json.dumps({**cfg, "sample_size": latent}, indent=2))
                else:
                    os.link(f, dst)
    return view


def driver(spec: str) -> int:
    """Inside the measuring process: run one erasure, time the progress ticks, print one JSON line."""
    import torch

    from igmu.artifacts import load_artifact
    from igmu.erase import run_erase
    from igmu.utils.device import Runtime

    s = json.loads(spec)
    torch.set_num_threads(s["threads"])
    ticks = []

    def factory(total):
        def advance(k=1, **info):
            ticks.append(time.perf_counter())
        return advance

    rt = Runtime.resolve(s["device"], s["dtype"], s["checkpointing"])
    art = run_erase(s["model"], s["method"], [TARGET], ANCHOR, [], None, s["sets"], s["out"], factory, rt)
    man = load_artifact(art)[0]
    gaps = [b - a for a, b in zip(ticks, ticks[1:])][-3:]
    print(json.dumps({"cost": man["cost"], "ticks": len(ticks), "per_iteration": statistics.median(gaps) if gaps else None,
                      "tensor_dtypes": man["tensor_dtypes"]}))
    return 0


def available_gb() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="out/scale")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--methods", default=",".join(SCALE_BUDGET))
    ap.add_argument("--latent", type=int, default=None, help="latent side (default 16 on CPU, 64 on GPU)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--force", action="store_true", help="run even where the estimate says it cannot fit")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per (method, dtype)")
    ap.add_argument("--driver", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.driver:
        return driver(a.driver)
    latent = a.latent or (16 if a.device == "cpu" else 64)
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = build(work, latent)
    where = "CPU, 2 cores" if a.device == "cpu" else a.device
    rows = json.loads((work / "scale.json").read_text()) if (work / "scale.json").is_file() else {}
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(a.threads))
    for dtype in [d.strip() for d in a.dtypes.split(",") if d.strip()]:
        for m in [m.strip() for m in a.methods.split(",") if m.strip()]:
            key = f"{m}|{dtype}|{a.device}|{latent}|{int(a.checkpointing)}"
            if key in rows and rows[key].get("status") == "ok":
                continue
            need, have = ESTIMATE_GB.get(m, 8), available_gb()
            if a.device == "cpu" and need > have and not a.force:
                rows[key] = {"status": f"not run: needs about {need} GB, {have:.0f} GB available"}
                print(f"{m} {dtype}: {rows[key]['status']}", file=sys.stderr)
                (work / "scale.json").write_text(json.dumps(rows, indent=1))
                continue
            out = work / "artifacts" / f"{m}-{dtype}-{latent}"
            spec = json.dumps({"model": str(model), "method": m, "sets": SCALE_BUDGET[m], "out": str(out),
                               "device": a.device, "dtype": dtype, "checkpointing": a.checkpointing,
                               "threads": a.threads})
            t0 = time.perf_counter()
            try:
                res = subprocess.run([sys.executable, __file__, "--driver", spec], env=env, capture_output=True,
                                     text=True, timeout=a.timeout)
            except subprocess.TimeoutExpired:
                rows[key] = {"status": f"not finished in {a.timeout} s"}
                continue
            if res.returncode < 0:  # killed by a signal: SIGKILL is the kernel's out-of-memory killer here
                rows[key] = {"status": f"killed by signal {-res.returncode}" +
                             (" (out of memory)" if res.returncode == -9 else "")}
            elif res.returncode:
                err = [ln for ln in res.stderr.strip().splitlines() if "requires torchvision" not in ln]
                rows[key] = {"status": f"failed: {(err or ['?'])[-1][:200]}"}
            else:
                rows[key] = {"status": "ok", "wall_seconds": round(time.perf_counter() - t0, 1),
                             **json.loads(res.stdout.strip().splitlines()[-1])}
            print(f"{m} {dtype}: {rows[key]['status']} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            (work / "scale.json").write_text(json.dumps(rows, indent=1))
    print(table(rows, a.device, latent, where, a.checkpointing))
    return 0


def table(rows: dict, device: str, latent: int, where: str, checkpointing: bool = False) -> str:
    dtypes = sorted({k.split("|")[1] for k in rows if k.split("|")[2] == device and int(k.split("|")[3]) == latent},
                    key=["float32", "bfloat16", "float16"].index)
    head = "| method | " + " | ".join(f"{d}: s/iteration | {d}: peak memory | {d}: params changed" for d in dtypes) + " |"
    lines = [head, "|" + "---|" * (1 + 3 * len(dtypes))]
    for m in SCALE_BUDGET:
        cells = []
        for d in dtypes:
            r = rows.get(f"{m}|{d}|{device}|{latent}|{int(checkpointing)}")
            if not r:
                cells += ["", "", ""]
            elif r["status"] != "ok":
                cells += [r["status"], "", ""]
            else:
                c = r["cost"]
                per = (f"{c['erase_seconds']:.1f} s in all (an inference-time artifact: no weights changed)"
                       if c["params_changed"] == 0 else
                       f"{c['erase_seconds']:.1f} s in all (closed form)" if m in CLOSED_FORM or r["per_iteration"] is None
                       else f"{r['per_iteration']:.1f}")
                mem = f"{c['peak_rss_mb'] / 1024:.1f} GB RSS" + (f", {c['peak_gpu_mb'] / 1024:.1f} GB GPU"
                                                                 if c.get("peak_gpu_mb") is not None else "")
                cells += [per, mem, f"{c['params_changed']:,}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return (f"SD1.5-sized pipeline (random weights), {where}, latent {latent} x {latent} ({latent * 8} px)"
            f"{', gradient checkpointing' if checkpointing else ''}\n\n" + "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
