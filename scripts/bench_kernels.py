"""Where one generation UNet call spends its time, by kernel, against the FLOP lower bound.

    python scripts/bench_kernels.py [--model mini] [--images 64] [--threads 2] [--repeats 3] [--compile]

One denoiser call of the generation (`--images` images with classifier-free guidance: a UNet batch of twice
that, at the model's latent size, 77-token conditioning) is profiled with torch.profiler after two warm-up
calls, `--repeats` times; each kernel's self CPU time is taken from the fastest repeat. Kernels are grouped
into those that carry the FLOPs (convolutions, matrix products, attention) and the rest (normalisation,
activations, copies, additions). The FLOPs come from torch.utils.flop_counter (attention's from a
call with the math attention backend, which the counter sees as matrix products), the peak from the best
float32 2048 x 2048 matmul at the same thread count, of 10 before, between and after the profiled calls.

It answers one question of issue #18: can generation reach 2x the FLOP lower bound on this CPU? If the
FLOP-carrying kernels alone, at the shapes this model gives them, take more than twice the bound, no change of
schedule, batch or memory layout gets there: it needs faster kernels for those shapes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_official import _matmul_gflops as matmul_gflops, flop_counter  # noqa: E402  (its peak and FLOPs)

FLOP_KERNELS = {  # aten kernels that do the multiply-adds (self times partition a nested call)
    "conv": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution", "aten::conv2d",
             "aten::thnn_conv2d", "aten::_slow_conv2d_forward"),
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
                  "aten::_flash_attention_forward", "aten::scaled_dot_product_attention"),
}


def timed(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of fn() without gradients, after one warm-up call."""
    import torch

    with torch.no_grad():
        fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true",
                    help="also time the call in channels_last and compiled with torch.compile (inductor; needs "
                         "a C++ compiler)")
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from igmu.diffusion.arch import adapter_for
    from igmu.models.load import load_pipeline

    torch.set_num_threads(a.threads)
    pipe = load_pipeline(a.model)
    ad = adapter_for(pipe)
    unet = pipe.unet.eval()
    c = unet.config
    B = 2 * a.images
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, c.in_channels, c.sample_size, c.sample_size, generator=g)
    t = torch.full((B,), 500)
    with torch.no_grad():
        cond, uncond = ad.prompt_conditioning(["a red circle on a dark background"], None)
    ctx = torch.cat([uncond, cond]).repeat_interleave(a.images, 0)

    def call():
        return unet(x, t, encoder_hidden_states=ctx).sample

    peaks = [matmul_gflops(repeats=10)]
    with torch.no_grad():
        call(), call()
        with FlopCounterMode(display=False) as fc:
            call()
        by_op = {str(k).split(".")[-1]: v for k, v in fc.get_flop_counts()["Global"].items()}
        flops = flop_counter(call).get_total_flops()  # attention's FLOPs included
        by_op["attention"] = flops - fc.get_total_flops()
        best, kernels = float("inf"), None
        for _ in range(a.repeats):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                call()
                wall = time.perf_counter() - t0
            peaks.append(matmul_gflops(repeats=10))
            if wall < best:
                best = wall
                kernels = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    peak = max(peaks + [matmul_gflops(repeats=10)]) * 1e9  # the best seen before, between and after the calls
    bound = flops / peak
    total = sum(kernels.values())
    groups = {name: sum(s for k, s in kernels.items() if k in names) for name, names in FLOP_KERNELS.items()}
    flop_time = sum(groups.values())
    print(f"{a.model}: one UNet call at batch {B} ({a.images} images with guidance), {a.threads} thread(s)")
    print(f"FLOPs {flops / 1e9:.1f} G; float32 matmul peak {peak / 1e9:.0f} GFLOP/s; FLOP bound {bound * 1e3:.1f} ms")
    print(f"wall {best * 1e3:.1f} ms (fastest of {a.repeats} profiled calls) = {best / bound:.2f}x the bound; "
          f"profiled self CPU time {total * 1e3:.1f} ms")
    flop_groups = {"conv": ("convolution",), "matmul": ("addmm", "mm", "bmm", "baddbmm"), "attention": ("attention",)}
    print("| kernels | self CPU ms | share of time | share of FLOPs | GFLOP/s | x the FLOP bound |")
    print("|---|---|---|---|---|---|")
    for name, s in groups.items():
        f = sum(v for k, v in by_op.items() if k in flop_groups[name])
        print(f"| {name} | {s * 1e3:.1f} | {s / total:.0%} | {f / flops:.0%} | {f / max(s, 1e-9) / 1e9:.0f} | "
              f"{s / bound:.2f}x |")
    print(f"| all FLOP-carrying kernels | {flop_time * 1e3:.1f} | {flop_time / total:.0%} | 100% | "
          f"{flops / flop_time / 1e9:.0f} | {flop_time / bound:.2f}x |")
    print(f"| everything else | {(total - flop_time) * 1e3:.1f} | {(total - flop_time) / total:.0%} | 0% | | "
          f"{(total - flop_time) / bound:.2f}x |")
    top = sorted(((s, k) for k, s in kernels.items() if not k.startswith("aten::") or s > 0), reverse=True)[:12]
    if a.compile:
        eager = timed(call, a.repeats)
        unet.to(memory_format=torch.channels_last)
        xcl = x.to(memory_format=torch.channels_last)
        cl = timed(lambda: unet(xcl, t, encoder_hidden_states=ctx).sample, a.repeats)
        unet.to(memory_format=torch.contiguous_format)
        print(f"channels_last: {cl * 1e3:.1f} ms against eager {eager * 1e3:.1f} ms ({eager / cl:.2f}x)")
        t0 = time.perf_counter()
        cunet = torch.compile(unet)
        with torch.no_grad():
            cunet(x, t, encoder_hidden_states=ctx)
        setup = time.perf_counter() - t0
        compiled = timed(lambda: cunet(x, t, encoder_hidden_states=ctx).sample, a.repeats)
        with torch.no_grad():
            diff = (cunet(x, t, encoder_hidden_states=ctx).sample - call()).abs().max().item()
        print(f"torch.compile: eager {eager * 1e3:.1f} ms, compiled {compiled * 1e3:.1f} ms "
              f"({eager / compiled:.2f}x, {compiled / bound:.2f}x the bound; compiling took {setup:.0f} s; "
              f"largest difference from eager {diff:.1e})")
    print("largest kernels:", "; ".join(f"{k} {s * 1e3:.1f} ms" for s, k in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
