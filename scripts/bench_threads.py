"""Threads and parallel jobs on this machine: P processes of T threads each, side by side, interleaved.

Each job is one `igmu generate --threads T` of --images images from the mini model (a fixed prompt list,
the default settings); P of them start together. For every (P, T) the script reports the wall time of a
job and the throughput of all P together (images per second), as the median over --repeats rounds (the
configurations take turns inside each round, so a change in the machine's load hits all of them alike).
On a machine with C cores, P x T > C is oversubscription: torch's worker threads spin while they wait for
each other, and a job at T = 2 can take many times longer than at T = 1 (docs/performance.md).

    python scripts/bench_threads.py --configs 1x1,1x2,2x1,2x2 --repeats 3
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="1x1,1x2,2x1,2x2", help="PxT: P processes of T threads each")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "bench" / "threads.json")
    a = ap.parse_args()
    configs = [tuple(int(x) for x in c.split("x")) for c in a.configs.split(",")]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error", HF_HUB_OFFLINE="1")
    env.pop("OMP_NUM_THREADS", None)  # --threads decides
    env.pop("MKL_NUM_THREADS", None)
    res: dict = {f"{p}x{t}": {"job_s": [], "images_per_s": []} for p, t in configs}
    loads = []
    with tempfile.TemporaryDirectory(prefix="igmu-threads-") as tmp:
        tmp = Path(tmp)
        prompts = tmp / "prompts.txt"
        sys.path.insert(0, str(ROOT / "src"))
        import numpy as np

        from igmu.world.captions import canonical
        from igmu.world.scenes import sample_scene

        rng = np.random.default_rng(0)
        prompts.write_text("\n".join(canonical(sample_scene(rng)) for _ in range(a.images)) + "\n")
        for r in range(a.repeats):
            order = configs if r % 2 == 0 else configs[::-1]
            for p, t in order:
                loads.append(os.getloadavg()[0])
                t0 = time.perf_counter()
                procs = [subprocess.Popen([sys.executable, "-m", "igmu.cli", "generate", "--prompts", str(prompts),
                                           "-n", "1", "--threads", str(t), "--out", str(tmp / f"out-{r}-{p}x{t}-{i}")],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                         for i in range(p)]
                ends = []
                for proc in procs:
                    _, err = proc.communicate()
                    ends.append(time.perf_counter() - t0)
                    if proc.returncode:
                        sys.exit(f"error: igmu generate failed: {err.strip().splitlines()[-1:]}")
                wall = max(ends)
                res[f"{p}x{t}"]["job_s"].append(statistics.mean(ends))
                res[f"{p}x{t}"]["images_per_s"].append(p * a.images / wall)
                print(f"round {r}: {p} x {t} threads: job {statistics.mean(ends):.1f} s, "
                      f"{p * a.images / wall:.2f} images/s", file=sys.stderr, flush=True)
    print(f"| processes x threads | job wall s (median of {a.repeats}) | images/s, all jobs (median) |\n|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {statistics.median(v['job_s']):.1f} | {statistics.median(v['images_per_s']):.2f} |")
    print(f"\n{os.cpu_count()} CPUs; load average while measuring {min(loads):.1f}-{max(loads):.1f}; "
          f"each job: igmu generate of {a.images} images (model load included)")
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps({"configs": res, "images": a.images, "loads": loads, "cpus": os.cpu_count()},
                                 indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
