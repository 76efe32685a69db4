"""Erase cost of the closed-form methods at real SDXL and FLUX.1-dev sizes, on CPU with random weights built
from the configs kept in the repo (src/igmu/models/configs/*.json). Each (model, method) runs in its own
process: erase seconds (Eraser.erase, text encoding included), the process's peak RSS (VmHWM), its RSS once
the model is built, the parameters materialised, and the parameters the erasure changed.

What is built, so that it fits this CPU machine (23 GiB, shared with other jobs) and says exactly what was
measured:
- SDXL base 1.0: both text encoders at full size (CLIP ViT-L/14, 123 M parameters, and OpenCLIP ViT-bigG/14,
  695 M, fp32) and every cross-attention to_k / to_v of the UNet at full size (140 matrices, 2048 wide: the
  layers UCE and RECE edit). The rest of the UNet (2.6 B parameters, 10.3 GB in fp32) is created on the meta
  device (no memory, never run): closed-form methods only read and write those matrices.
- FLUX.1-dev: CLIP ViT-L at full size; the transformer's context_embedder (3072 x 4096) and pooled-text
  projection (3072 x 768) at full size (the layers UCE and RECE edit there); the rest of the 11.9 B
  transformer on meta. T5-XXL (4.76 B parameters: 19 GB in fp32, 9.5 GB in bf16, more than is free here) is
  replaced by a stand-in returning rows of T5's width (4096) for T5's sequence length (512): T5's encoding
  time and memory are NOT in the FLUX figures; everything after it is.
The CLIP tokenizers are the mini world's (real SDXL/FLUX vocabularies cannot be downloaded here); the real
sequence lengths are kept (77 CLIP, 512 T5).

    python scripts/bench_scale_arch.py                      # table for every cell, printed
    python scripts/bench_scale_arch.py --write-docs         # and into docs/architectures.md
    python scripts/bench_scale_arch.py --one sdxl uce       # one cell, JSON (what the table runs)
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
CONFIGS = ROOT / "src" / "igmu" / "models" / "configs"
CELLS = [("sdxl", "uce"), ("sdxl", "rece"), ("flux", "uce"), ("flux", "rece")]
TARGETS, PRESERVE = ["circle"], ["square"]
BEGIN, END = "<!-- bench-scale-arch:begin (python scripts/bench_scale_arch.py --write-docs) -->", \
    "<!-- bench-scale-arch:end -->"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _text_encoder(cfg: dict):
    import transformers

    cfg = dict(cfg)
    cls = getattr(transformers, cfg.pop("_class"))
    conf_cls = transformers.T5Config if cls.__name__.startswith("T5") else transformers.CLIPTextConfig
    return cls(conf_cls(**cfg)).eval()


def _materialise(module, names: list[str]) -> int:
    """Give the Linear layers `names` of a meta-device module real (random, N(0, 0.02)) weights; returns their
    parameter count."""
    import torch

    n = 0
    for name in names:
        lin = module.get_submodule(name)
        lin.weight = torch.nn.Parameter(torch.randn(lin.weight.shape) * 0.02, requires_grad=False)
        n += lin.weight.numel()
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(torch.zeros(lin.bias.shape), requires_grad=False)
            n += lin.bias.numel()
    return n


def build(model: str):
    """(pipeline, {what: parameters materialised})."""
    import diffusers
    import torch
    from accelerate import init_empty_weights

    from igmu.models.tokenizer import build_t5_tokenizer, load_world_tokenizer

    torch.manual_seed(0)
    spec = json.loads((CONFIGS / ("sdxl-base-1.0.json" if model == "sdxl" else "flux.1-dev.json")).read_text())
    tok = load_world_tokenizer()
    tok.model_max_length = 77  # real CLIP context
    sched_cfg = dict(spec["scheduler"])
    sched = getattr(diffusers, sched_cfg.pop("_class"))(**sched_cfg)
    with init_empty_weights():
        vae = diffusers.AutoencoderKL(**spec["vae"])
    te1 = _text_encoder(spec["text_encoder"])
    counts = {"text_encoder": sum(p.numel() for p in te1.parameters())}
    if model == "sdxl":
        te2 = _text_encoder(spec["text_encoder_2"])
        counts["text_encoder_2"] = sum(p.numel() for p in te2.parameters())
        with init_empty_weights():
            unet = diffusers.UNet2DConditionModel(**spec["unet"])
        names = [n for n, _ in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
        counts["unet (attn2 to_k/to_v only)"] = _materialise(unet, names)
        counts["unet (total, not built)"] = sum(p.numel() for p in unet.parameters())
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                                                   tokenizer_2=tok, unet=unet, scheduler=sched)
    else:
        t5cfg = spec["text_encoder_2"]
        t5_tok = build_t5_tokenizer(tok, max_length=512)

        class T5StandIn(torch.nn.Module):
            """Rows of T5-XXL's width for each token id (the encoder itself does not fit; see the docstring)."""

            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(len(t5_tok), t5cfg["d_model"])

            @property
            def dtype(self):
                return self.emb.weight.dtype

            def forward(self, input_ids, output_hidden_states=False):
                return (self.emb(input_ids),)

        te2 = T5StandIn().eval()
        counts["text_encoder_2 (T5 stand-in)"] = sum(p.numel() for p in te2.parameters())
        with init_empty_weights():
            tr = diffusers.FluxTransformer2DModel(**spec["transformer"])
        counts["transformer (context_embedder + pooled projection only)"] = _materialise(
            tr, ["context_embedder", "time_text_embed.text_embedder.linear_1"])
        counts["transformer (total, not built)"] = sum(p.numel() for p in tr.parameters())
        pipe = diffusers.FluxPipeline(scheduler=sched, vae=vae, text_encoder=te1, tokenizer=tok, text_encoder_2=te2,
                                      tokenizer_2=t5_tok, transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    return pipe, counts


def one(model: str, method: str) -> dict:
    import torch

    from igmu.methods import get_method
    from igmu.methods.base import EraseRequest, parse_config
    from igmu.utils.memory import peak_rss_mb

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    t0 = time.perf_counter()
    pipe, counts = build(model)
    built_s, rss_built = time.perf_counter() - t0, _rss_mb()
    m = get_method(method)
    m.check_architecture(pipe)
    cfg = m.resolve_config(pipe, parse_config(m, None, []))
    req = EraseRequest(targets=TARGETS, anchor=None, preserve=PRESERVE)
    m.check(pipe, req, cfg)
    t0, c0 = time.perf_counter(), time.process_time()
    changed = m.erase(pipe, req, cfg)
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"model": model, "method": method, "erase_seconds": round(secs, 2), "erase_cpu_seconds": round(cpu, 2),
            "peak_rss_mb": round(peak_rss_mb()),
            "rss_after_build_mb": round(rss_built), "build_seconds": round(built_s, 1),
            "tensors_changed": len(changed), "params_in_changed_tensors": sum(v.numel() for v in changed.values()),
            "materialised": counts, "threads": torch.get_num_threads(),
            "config": {k: v for k, v in cfg.model_dump().items()}}


def table(rows: list[dict]) -> str:
    out = ["| model | method | erase, wall (s) | erase, CPU time (s) | peak RSS (MB) | RSS once built (MB) | "
           "changed tensors (parameters) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['method']} | {r['erase_seconds']} | {r['erase_cpu_seconds']} | {r['peak_rss_mb']} | "
                   f"{r['rss_after_build_mb']} | {r['tensors_changed']} ({r['params_in_changed_tensors'] / 1e6:.1f} M) |")
    out.append("")
    for model in dict.fromkeys(r["model"] for r in rows):
        r = next(x for x in rows if x["model"] == model)
        out.append(f"- {model} built: " + "; ".join(f"{k} {v / 1e6:.1f} M" for k, v in r["materialised"].items()))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "METHOD"))
    ap.add_argument("--cells", default=",".join(f"{m}:{x}" for m, x in CELLS),
                    help="comma-separated model:method cells to run (default: all)")
    ap.add_argument("--results", default=str(ROOT / "out" / "bench_scale_arch.json"),
                    help="JSON file the measured rows are kept in (a cell run again replaces its row)")
    ap.add_argument("--write-docs", action="store_true", help="render every kept row into docs/architectures.md")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(*a.one)))
        return 0
    store = Path(a.results)
    kept = json.loads(store.read_text()) if store.is_file() else {}
    for cell in [c.strip() for c in a.cells.split(",") if c.strip()]:
        model, method = cell.split(":")
        res = subprocess.run([sys.executable, __file__, "--one", model, method], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"{model} {method}: failed (exit {res.returncode})\n{res.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        r["measured"] = time.strftime("%Y-%m-%d")
        kept[cell] = r
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_text(json.dumps(kept, indent=1))
        print(f"{model:5s} {method:5s} erase {r['erase_seconds']} s ({r['erase_cpu_seconds']} s CPU), peak RSS "
              f"{r['peak_rss_mb']} MB (built: {r['rss_after_build_mb']} MB)", file=sys.stderr, flush=True)
    rows = [kept[f"{m}:{x}"] for m, x in CELLS if f"{m}:{x}" in kept]
    if not rows:
        return 1
    text = table(rows)
    print(text)
    if a.write_docs:
        doc = ROOT / "docs" / "architectures.md"
        d = doc.read_text()
        head, rest = d.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        when = ", ".join(sorted({r["measured"] for r in rows}))
        doc.write_text(f"{head}{BEGIN}\nMeasured {when}, CPU, {rows[0]['threads']} threads, fp32 "
                       f"(`python scripts/bench_scale_arch.py --write-docs`):\n\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
