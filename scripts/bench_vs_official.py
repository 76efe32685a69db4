"""igmu against the official scripts and plain diffusers, side by side in one run, interleaved.

Rows (each a min and a median over --pairs interleaved pairs; the order inside a pair alternates):

  esd         seconds per ESD-x iteration: the official esd_sd.py (rohitgandikota/erasing) vs igmu's ESD,
              same model, same settings (50 sampler steps, guidance 3, lr 5e-5, Adam), the same stop of
              every iteration, one thread each, each run a fresh process
  uce         one UCE edit: the official trainscripts/uce_sd_erase.py (rohitgandikota/unified-concept-
              editing) vs igmu's UCE (its variant of that script when igmu has one), one thread each
  generate    64 images at the defaults (20 steps, guidance 5), in one process on --gen-threads threads:
              igmu.generate.generate_images vs a plain diffusers StableDiffusionPipeline call from the same
              initial noise; plus the FLOP lower bound: the FLOPs of the UNet / VAE / text-encoder calls
              of one generation (flop_counter: torch's FlopCounterMode, attention counted) over the best float32 matmul
              GFLOP/s measured on the same threads in the same run

The official code is read from a copy of its repository (a checkout, or a bare git directory such as
the one `git clone --mirror` or the fetch tool makes), copied to a temporary folder and patched there,
at run time, only for: the model path, the resolution, the dtype, the device (a command-line option
of the scripts), and timing (a timer around the training loop / the edit; saving the result is not
timed). One more patch, for a like-for-like count of sampler steps: esd_sd.py's random stop
(`random.randint(0, num_inference_steps-1)`) is replaced by the same list of stops igmu's ESD draws
for its seed (igmu.methods.esd.trajectory_draws). Nothing fetched is kept. Each patch must match
exactly once, so an upstream change fails loudly instead of timing something else.

    python scripts/bench_vs_official.py --erasing-repo DIR --uce-repo DIR [--pairs 3] [--rows esd,uce,generate]

Wall time is what the table reports; process CPU time is printed beside it (less sensitive to other
jobs on the machine). Prints a Markdown table and writes --json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

# ---------------------------------------------------------------- reading and patching the official code

ESD_FILES = ["esd_sd.py", "utils/sd_utils.py"]
UCE_FILES = ["trainscripts/uce_sd_erase.py"]

TIMER = '''import json as _igmu_json, os as _igmu_os, time as _igmu_time  # igmu bench: timing
def _igmu_clock():
    return (_igmu_time.perf_counter(), _igmu_time.process_time())
def _igmu_write(marks):
    with open(_igmu_os.environ["IGMU_BENCH_OUT"], "w") as _f:
        _igmu_json.dump({"marks": marks}, _f)
class _IgmuTimed:  # igmu bench: stands in for the tqdm bar, records a clock at every iteration start and at the end
    def __init__(self, it):
        self.it = it
    def __iter__(self):
        marks = []
        for x in self.it:
            marks.append(_igmu_clock())
            yield x
        marks.append(_igmu_clock())
        _igmu_write(marks)
    def set_postfix(self, **kw):
        pass
'''

ESD_PATCHES = [  # (old, new): each must occur exactly once in esd_sd.py
    ('pipe, base_unet, esd_unet = load_sd_models(basemodel_id="CompVis/stable-diffusion-v1-4",',
     'pipe, base_unet, esd_unet = load_sd_models(basemodel_id=_igmu_os.environ["IGMU_BENCH_MODEL"],'),  # model
    ("height=width=1024", 'height=width=int(_igmu_os.environ["IGMU_BENCH_SIZE"])'),  # resolution
    ("torch_dtype = torch.bfloat16", "torch_dtype = torch.float32"),  # dtype (CPU)
    ("pbar = tqdm(range(iterations), desc='Training ESD')", "pbar = _IgmuTimed(range(iterations))"),  # timing
    ("run_till_timestep = random.randint(0, num_inference_steps-1)",  # the same stops as igmu's run
     'run_till_timestep = _igmu_json.loads(_igmu_os.environ["IGMU_BENCH_STOPS"])[iteration]'),
]
UCE_PATCHES = [
    ("    save_file(uce_state_dict, os.path.join(save_dir, exp_name+'.safetensors'))",
     "    pass  # igmu bench: saving is not timed"),
    ("    UCE(pipe, edit_concepts, guide_concepts, preserve_concepts, erase_scale, preserve_scale, lamb, save_dir, exp_name)",
     "    _igmu_marks = []\n"
     "    for _igmu_r in range(int(_igmu_os.environ['IGMU_BENCH_REPEATS'])):\n"
     "        _igmu_t = _igmu_clock()\n"
     "        UCE(pipe, edit_concepts, guide_concepts, preserve_concepts, erase_scale, preserve_scale, lamb, save_dir, exp_name)\n"
     "        _igmu_marks.append([_igmu_t, _igmu_clock()])\n"
     "    _igmu_write(_igmu_marks)"),
]


def read_repo_file(repo: Path, rel: str) -> str:
    """A file of a repository copy: a checkout (DIR/rel) or a git directory (git show HEAD:rel)."""
    p = repo / rel
    if p.is_file():
        return p.read_text()
    git_dir = repo if (repo / "HEAD").is_file() else repo / ".git"
    r = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{rel}"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {rel} not found in {repo} (neither a checkout nor a git directory that holds it)")
    return r.stdout


def patched_copy(repo: Path, files: list[str], main: str, patches: list[tuple[str, str]], dest: Path) -> Path:
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(read_repo_file(repo, rel))
    src = (dest / main).read_text()
    for old, new in patches:
        if src.count(old) != 1:
            sys.exit(f"error: {main}: expected exactly one {old!r}; has the official code changed?")
        src = src.replace(old, new)
    (dest / main).write_text(TIMER + src)
    return dest / main


def git_head(repo: Path) -> str:
    git_dir = repo if (repo / "HEAD").is_file() else repo / ".git"
    r = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


# ---------------------------------------------------------------- running

def env(threads: int, **extra) -> dict:
    e = dict(os.environ)
    e.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
              "PYTHONPATH": str(SRC) + os.pathsep + e.get("PYTHONPATH", "")})
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(cmd: list[str], cwd: Path, environ: dict) -> None:
    r = subprocess.run(cmd, cwd=cwd, env=environ, capture_output=True, text=True)
    if r.returncode != 0:
        tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-15:])
        sys.exit(f"error: {' '.join(cmd[:3])} ... failed (exit {r.returncode}):\n{tail}")


def per_iteration(marks: list, n: int | None = None) -> tuple[float, float]:
    """(wall, cpu) seconds per iteration from (wall, cpu) clocks at the start and the end (and, for the
    official loop, at every iteration start in between: n = len(marks) - 1)."""
    n = n or len(marks) - 1
    return (marks[-1][0] - marks[0][0]) / n, (marks[-1][1] - marks[0][1]) / n


def stats(xs: list[float]) -> dict:
    return {"min": min(xs), "median": statistics.median(xs), "all": xs}


# ---------------------------------------------------------------- workers (run in their own process)

def worker_esd(a) -> None:
    import torch

    from igmu.methods import get_method
    from igmu.methods.base import EraseRequest, parse_config
    from igmu.models.load import load_pipeline

    torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.model)
    m = get_method("esd")
    cfg = parse_config(m, None, [f"iterations={a.iterations}", "train_method=xattn", f"seed={a.seed}"])
    t0 = (time.perf_counter(), time.process_time())
    m.erase(pipe, EraseRequest(targets=[a.concept]), cfg)  # the whole erasure: sampling ahead included
    t1 = (time.perf_counter(), time.process_time())
    Path(a.out).write_text(json.dumps({"marks": [t0, t1], "iterations": a.iterations}))


def worker_uce(a) -> None:
    import torch

    from igmu.methods import get_method
    from igmu.methods.base import EraseRequest, parse_config
    from igmu.models.load import load_pipeline

    torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.model)
    m = get_method("uce")
    fields = m.Config.model_fields
    sets = ["variant=uce_sd_erase"] if "variant" in fields else []
    cfg = parse_config(m, None, sets)
    original = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    marks = []
    for _ in range(a.repeats):
        pipe.unet.load_state_dict(original)  # every edit starts from the original weights (not timed)
        t0 = (time.perf_counter(), time.process_time())
        m.erase(pipe, EraseRequest(targets=[a.concept]), cfg)
        marks.append([t0, (time.perf_counter(), time.process_time())])
    Path(a.out).write_text(json.dumps({"marks": marks, "sets": sets}))


def _prompts(n: int) -> list[str]:
    import numpy as np

    from igmu.world.captions import canonical
    from igmu.world.scenes import sample_scene

    rng = np.random.default_rng(0)
    return [canonical(sample_scene(rng)) for _ in range(n)]


def _matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def flop_counter(fn):
    """torch's FLOP counter after one call of fn(), attention included: the counter has no formula for the CPU
    attention kernel, so the call runs with the math attention backend, which it sees as matrix products."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, sdpa_kernel(SDPBackend.MATH):
        fn()
    return fc


def worker_generate(a) -> None:
    """igmu generation vs plain diffusers, interleaved in this process, and the FLOP lower bound."""
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from igmu.generate import GenSettings, generate_images, initial_noise
    from igmu.models.load import load_pipeline, resolve_model

    torch.set_num_threads(a.threads)
    s = GenSettings()
    pipe = load_pipeline(a.model)
    plain = StableDiffusionPipeline.from_pretrained(resolve_model(a.model), safety_checker=None,
                                                    requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)
    prompts, seeds = _prompts(a.images), list(range(a.images))
    h = w = pipe.unet.config.sample_size * pipe.vae_scale_factor

    def igmu_run():
        return generate_images(pipe, prompts, seeds, s, batch_size=a.images)

    def plain_run():  # a plain diffusers call from the same initial noise, converted to uint8 the usual way
        lat = torch.cat([initial_noise(plain, sd, h, w) for sd in seeds])
        with torch.no_grad():
            img = plain(prompt=prompts, latents=lat, num_inference_steps=s.steps, guidance_scale=s.guidance,
                        height=h, width=w, output_type="np").images
        return (np.asarray(img) * 255).round().clip(0, 255).astype(np.uint8)

    res = {"igmu": [], "plain": [], "igmu_cpu": [], "plain_cpu": [], "matmul_gflops": []}
    out = {}
    res["matmul_gflops"].append(_matmul_gflops())
    for p in range(a.pairs):
        order = [("igmu", igmu_run), ("plain", plain_run)]
        for name, fn in (order if p % 2 == 0 else order[::-1]):
            t, c = time.perf_counter(), time.process_time()
            out[name] = fn()
            res[name].append(time.perf_counter() - t)
            res[name + "_cpu"].append(time.process_time() - c)
        res["matmul_gflops"].append(_matmul_gflops())
    res["pixel_identical"] = bool(np.array_equal(out["igmu"], out["plain"]))
    res["max_pixel_diff"] = int(np.abs(out["igmu"].astype(int) - out["plain"].astype(int)).max())
    fc = flop_counter(igmu_run)
    counts = fc.get_flop_counts()
    res["flops"] = fc.get_total_flops()
    res["flops_by_module"] = {k: sum(v.values()) for k, v in counts.items() if k != "Global" and "." not in k}
    Path(a.out).write_text(json.dumps(res))


# ---------------------------------------------------------------- the driver

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--erasing-repo", type=Path, help="copy of github.com/rohitgandikota/erasing (checkout or git dir)")
    ap.add_argument("--uce-repo", type=Path, help="copy of github.com/rohitgandikota/unified-concept-editing")
    ap.add_argument("--rows", default="esd,uce,generate")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--model", default="mini")
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--iterations", type=int, default=50, help="ESD iterations per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=20, help="UCE edits per run")
    ap.add_argument("--threads", type=int, default=1, help="threads of the ESD and UCE runs")
    ap.add_argument("--gen-threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "vs_official.json")
    ap.add_argument("--worker", choices=["esd", "uce", "generate"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        {"esd": worker_esd, "uce": worker_uce, "generate": worker_generate}[a.worker](a)
        return 0
    if a.pairs < 3:
        print("note: fewer than 3 pairs", file=sys.stderr)
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    py = sys.executable
    me = str(Path(__file__).resolve())
    results: dict = {"settings": vars(a) | {"erasing_repo": str(a.erasing_repo), "uce_repo": str(a.uce_repo),
                                             "json": str(a.json)},
                     "load_before": os.getloadavg(), "cpus": os.cpu_count(), "rows": {}}
    sys.path.insert(0, str(SRC))
    from igmu.models.load import load_pipeline, resolve_model

    model_dir = resolve_model(a.model)
    probe = load_pipeline(a.model)
    size = probe.unet.config.sample_size * probe.vae_scale_factor
    del probe
    with tempfile.TemporaryDirectory(prefix="igmu-vs-official-") as tmp:
        tmp = Path(tmp)
        if "esd" in rows:
            if not a.erasing_repo:
                sys.exit("error: the esd row needs --erasing-repo")
            import numpy as np

            from igmu.methods.esd import ESDConfig, trajectory_draws

            steps = ESDConfig().sample_steps
            stops = [s for s, _ in trajectory_draws(np.random.default_rng(a.seed), a.iterations, steps)]
            script = patched_copy(a.erasing_repo, ESD_FILES, "esd_sd.py", ESD_PATCHES, tmp / "erasing")
            r = {"official": [], "igmu": [], "official_cpu": [], "igmu_cpu": [],
                 "official_commit": git_head(a.erasing_repo), "mean_stop": statistics.mean(stops)}
            for p in range(a.pairs):
                for side in (("official", "igmu") if p % 2 == 0 else ("igmu", "official")):
                    out = tmp / f"esd-{side}-{p}.json"
                    if side == "official":
                        run([py, str(script), "--erase_concept", a.concept, "--train_method", "esd-x",
                             "--iterations", str(a.iterations), "--device", "cpu", "--save_path", str(tmp / "esd-out")],
                            script.parent, env(a.threads, IGMU_BENCH_MODEL=model_dir, IGMU_BENCH_SIZE=size,
                                               IGMU_BENCH_STOPS=json.dumps(stops), IGMU_BENCH_OUT=out))
                    else:
                        run([py, me, "--worker", "esd", "--model", a.model, "--concept", a.concept, "--iterations",
                             str(a.iterations), "--seed", str(a.seed), "--threads", str(a.threads), "--out", str(out)],
                            ROOT, env(a.threads))
                    got = json.loads(out.read_text())
                    wall, cpu = per_iteration(got["marks"], got.get("iterations"))
                    r[side].append(wall)
                    r[side + "_cpu"].append(cpu)
                    print(f"esd pair {p}: {side} {wall:.3f} s/iteration (cpu {cpu:.3f})", file=sys.stderr, flush=True)
            results["rows"]["esd"] = r
        if "uce" in rows:
            if not a.uce_repo:
                sys.exit("error: the uce row needs --uce-repo")
            script = patched_copy(a.uce_repo, UCE_FILES, "trainscripts/uce_sd_erase.py", UCE_PATCHES, tmp / "uce")
            r = {"official": [], "igmu": [], "official_cpu": [], "igmu_cpu": [], "official_commit": git_head(a.uce_repo)}
            for p in range(a.pairs):
                for side in (("official", "igmu") if p % 2 == 0 else ("igmu", "official")):
                    out = tmp / f"uce-{side}-{p}.json"
                    if side == "official":
                        run([py, str(script), "--edit_concepts", a.concept, "--concept_type", "object", "--model_id",
                             model_dir, "--device", "cpu", "--save_dir", str(tmp / "uce-out")], script.parent,
                            env(a.threads, IGMU_BENCH_REPEATS=a.repeats, IGMU_BENCH_OUT=out))
                    else:
                        run([py, me, "--worker", "uce", "--model", a.model, "--concept", a.concept, "--repeats",
                             str(a.repeats), "--threads", str(a.threads), "--out", str(out)], ROOT, env(a.threads))
                    got = json.loads(out.read_text())
                    if "sets" in got:
                        r["igmu_sets"] = got["sets"]
                    walls = [e[1][0] - e[0][0] for e in got["marks"][1:]]  # the first edit is a warm-up
                    cpus = [e[1][1] - e[0][1] for e in got["marks"][1:]]
                    r[side].append(statistics.median(walls))
                    r[side + "_cpu"].append(statistics.median(cpus))
                    print(f"uce pair {p}: {side} {r[side][-1] * 1000:.1f} ms per edit", file=sys.stderr, flush=True)
            results["rows"]["uce"] = r
        if "generate" in rows:
            out = tmp / "generate.json"
            run([py, me, "--worker", "generate", "--model", a.model, "--pairs", str(a.pairs), "--images",
                 str(a.images), "--threads", str(a.gen_threads), "--out", str(out)], ROOT, env(a.gen_threads))
            results["rows"]["generate"] = json.loads(out.read_text())
    results["load_after"] = os.getloadavg()
    print(table(results))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(results, indent=1))
    return 0


def table(res: dict) -> str:
    def mm(xs, scale=1.0, fmt="{:.3f}"):
        return f"{fmt.format(min(xs) * scale)} / {fmt.format(statistics.median(xs) * scale)}"

    lines = ["| what | official / plain diffusers (min / median) | igmu (min / median) | ratio of medians "
             "(of minima) | CPU-time ratio of medians |", "|---|---|---|---|---|"]
    rows = res["rows"]
    if "esd" in rows:
        r = rows["esd"]
        lines.append(f"| ESD-x, s per iteration (esd_sd.py @ {r['official_commit'][:7]}) | {mm(r['official'])} | "
                     f"{mm(r['igmu'])} | {_ratio(r, 'official', 'igmu')} | {_ratio(r, 'official_cpu', 'igmu_cpu', False)} |")
    if "uce" in rows:
        r = rows["uce"]
        lines.append(f"| UCE edit, ms (uce_sd_erase.py @ {r['official_commit'][:7]}) | {mm(r['official'], 1000, '{:.1f}')} | "
                     f"{mm(r['igmu'], 1000, '{:.1f}')} | {_ratio(r, 'official', 'igmu')} | "
                     f"{_ratio(r, 'official_cpu', 'igmu_cpu', False)} |")
    if "generate" in rows:
        r = rows["generate"]
        n = res["settings"]["images"]
        lines.append(f"| {n} images, s (plain diffusers call vs igmu; pixel-identical: {r['pixel_identical']}) | "
                     f"{mm(r['plain'], fmt='{:.2f}')} | {mm(r['igmu'], fmt='{:.2f}')} | {_ratio(r, 'plain', 'igmu')} | "
                     f"{_ratio(r, 'plain_cpu', 'igmu_cpu', False)} |")
        peak = max(r["matmul_gflops"])
        bound = r["flops"] / 1e9 / peak
        lines.append(f"| {n} images vs the FLOP lower bound ({r['flops'] / 1e9:.0f} GFLOP at {peak:.0f} GFLOP/s "
                     f"float32 matmul = {bound:.2f} s) | {bound:.2f} (bound) | {mm(r['igmu'], fmt='{:.2f}')} | "
                     f"{statistics.median(r['igmu']) / bound:.2f}x the bound ({min(r['igmu']) / bound:.2f}x) | |")
    lines.append(f"\nload average before / after: {res['load_before'][0]:.1f} / {res['load_after'][0]:.1f} "
                 f"on {res['cpus']} CPUs")
    return "\n".join(lines)


def _ratio(r: dict, ref: str, ours: str, with_min: bool = True) -> str:
    med = statistics.median(r[ref]) / statistics.median(r[ours])
    txt = f"{med:.2f}x faster" if med >= 1 else f"{1 / med:.2f}x slower"
    if with_min:
        txt += f" ({min(r[ref]) / min(r[ours]):.2f})"
    return txt


if __name__ == "__main__":
    sys.exit(main())
