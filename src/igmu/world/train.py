"""Training recipes for the mini model: `vae` then `unet` (UNet + text encoder), then `export`.

    igmu world train vae  --data data/dataigm-mini --work runs/mini
    igmu world train unet --data data/dataigm-mini --work runs/mini
    igmu world export     --work runs/mini --out src/igmu/world/assets/mini-sd

Each stage checkpoints into --work every few hundred steps and resumes from the
last checkpoint when rerun, so an interrupted run loses at most that much work.
Recipe choices: Stable Diffusion's noise schedule and epsilon objective,
min-SNR-5 loss weighting (Hang et al., ICCV 2023) to converge in few steps,
10% caption dropout so classifier-free guidance works (Ho & Salimans, 2022),
EMA of weights (decay 0.999), AdamW with warm-up and cosine decay. The text
encoder is trained from scratch together with the UNet (there is no pretrained
CLIP for this world); it is a stock CLIPTextModel.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.io import atomic_path, write_json
from . import model as M
from .captions import canonical, caption
from .data import load_split
from .render import Scene

P_DROP_CAPTION = 0.1  # empty caption: trains the unconditional branch for classifier-free guidance
P_CANONICAL = 0.15  # the fixed full caption; otherwise a random phrasing (synonyms, omissions, languages)
# Share of each scene kind in UNet training batches. Two-object scenes are over-sampled
# (20% of the data, 40% of batches): with uniform sampling the model fused or confused
# the two shapes (19% of pair prompts drawn with both objects after 6,500 steps).
KIND_SHARE = {"object": 0.3, "pair": 0.4, "identity": 0.12, "carrier": 0.18}


def pick_device(device: str) -> torch.device:
    """'cpu', 'cuda', or 'auto' (cuda when present). Batches are drawn on the CPU either way,
    so a recipe sees the same data order on any device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        from ..errors import UserError
        raise UserError("--device cuda asked for, but torch sees no CUDA device; use --device cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(device)


def kind_sampler(scenes, share: dict[str, float]):
    """Per-example sampling probabilities giving each scene kind its share of batches."""
    kinds = np.array([s.kind for s in scenes])
    p = np.zeros(len(scenes))
    for k, w in share.items():
        m = kinds == k
        if m.any():
            p[m] = w / m.sum()
    return p / p.sum()


def _train_caption(scene, rng) -> str:
    u = rng.random()
    if u < P_DROP_CAPTION:
        return ""
    if u < P_DROP_CAPTION + P_CANONICAL:
        return canonical(scene)
    return caption(scene, rng)


def _images_to_tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _save_state(path: Path, tensors: dict[str, torch.Tensor]):
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class EMA:
    def __init__(self, params, decay=0.999):
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_mul_(self.shadow, d)
        torch._foreach_add_(self.shadow, [p.detach() for p in self.params], alpha=1 - d)


def _lr(step, total, base, warmup=200):
    if step < warmup:
        return base * (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, prog))))


def _log(msg):
    print(msg, flush=True)


def train_vae(data: Path, work: Path, steps: int = 900, batch: int = 64, lr: float = 1e-3, seed: int = 0):
    torch.manual_seed(seed)
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    imgs, _ = load_split(data, "train")
    x_all = _images_to_tensor(imgs)
    vae = M.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start, before = 0, 0.0
    ck = work / "vae_ckpt.safetensors"
    if ck.exists():
        vae.load_state_dict(_load_state(ck))
        opt.load_state_dict(torch.load(work / "vae_opt.pt", weights_only=True))
        state = json.loads((work / "vae_state.json").read_text())
        start, before = state["step"], state["seconds"]
        _log(f"resuming VAE from step {start}")
    g = torch.Generator().manual_seed(seed + start)
    t0 = time.time()
    for step in range(start, steps):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, steps, lr, 100)
        idx = torch.randint(0, len(x_all), (batch,), generator=g)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-5 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            _log(f"vae step {step + 1}/{steps} loss {loss.item():.4f} kl {kl.item():.2f} {time.time() - t0:.0f}s")
        if (step + 1) % 500 == 0 or step + 1 == steps:
            _save_state(ck, vae.state_dict())
            with atomic_path(work / "vae_opt.pt") as tmp:
                torch.save(opt.state_dict(), tmp)
            write_json(work / "vae_state.json", {"step": step + 1, "seconds": round(before + time.time() - t0, 1)})
    # latent statistics -> scaling factor (as SD's 0.18215 was chosen: unit variance latents)
    vae.eval()
    with torch.no_grad():
        lat = torch.cat([vae.encode(x_all[i:i + 512]).latent_dist.mean for i in range(0, min(4096, len(x_all)), 512)])
    scale = float(1.0 / lat.std())
    write_json(work / "vae_done.json", {"scaling_factor": scale, "steps": steps})
    _log(f"vae done; latent std {lat.std():.3f} -> scaling_factor {scale:.4f}")


def _load_vae(work: Path):
    vae = M.make_vae()
    vae.load_state_dict(_load_state(Path(work) / "vae_ckpt.safetensors"))
    done = Path(work) / "vae_done.json"
    if not done.exists():
        from ..errors import UserError
        raise UserError(f"no finished VAE in {work}; run: igmu world train vae --work {work}")
    vae.register_to_config(scaling_factor=json.loads(done.read_text())["scaling_factor"])
    return vae.eval()


def train_unet(data: Path, work: Path, steps: int = 6500, batch: int = 64, lr: float = 6e-4, seed: int = 0,
               snr_gamma: float = 5.0, device: str = "cpu", init_from: Path | None = None,
               stop_at: int | None = None, kind_share: dict[str, float] | None = KIND_SHARE):
    """Train the UNet and text encoder together. `init_from` (a pipeline folder, e.g. the shipped
    mini model) starts a fresh run from its UNet and text-encoder weights instead of from scratch.
    `stop_at` ends the run after that step (checkpointed) with the schedule still laid out for `steps`;
    rerunning without it resumes to the end. `kind_share=None` samples training scenes uniformly
    (the recipe of the first 6,500-step stage of the shipped model)."""
    from ..models.tokenizer import load_world_tokenizer

    torch.manual_seed(seed)
    work = Path(work)
    imgs, recs = load_split(data, "train")
    scenes = [Scene.from_dict(r["scene"]) for r in recs]
    vae = _load_vae(work)
    with torch.no_grad():
        x_all = _images_to_tensor(imgs)
        posts = [vae.encode(x_all[i:i + 512]).latent_dist for i in range(0, len(x_all), 512)]
        lat_mean = torch.cat([p.mean for p in posts])
        lat_std = torch.cat([p.std for p in posts])
    sf = vae.config.scaling_factor
    del x_all, posts
    dev = pick_device(device)
    tok = load_world_tokenizer()
    te = M.make_text_encoder(tok).to(dev)
    unet = M.make_unet().to(dev)
    sched = M.make_train_scheduler()
    resuming = (work / "unet_state.json").exists()
    if init_from is not None and not resuming:
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        unet.load_state_dict(UNet2DConditionModel.from_pretrained(Path(init_from) / "unet").state_dict())
        te.load_state_dict(CLIPTextModel.from_pretrained(Path(init_from) / "text_encoder").state_dict())
        _log(f"starting from the weights of {init_from}")
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ema = EMA(params)
    start, before = 0, 0.0
    if resuming:
        st = _load_state(work / "unet_ckpt.safetensors")
        unet.load_state_dict({k[5:]: v for k, v in st.items() if k.startswith("unet.")})
        te.load_state_dict({k[3:]: v for k, v in st.items() if k.startswith("te.")})
        for i, s in enumerate(ema.shadow):
            s.copy_(st[f"ema.{i}"])
        opt.load_state_dict(torch.load(work / "unet_opt.pt", weights_only=True, map_location=dev))
        state = json.loads((work / "unet_state.json").read_text())
        start, before = state["step"], state["seconds"]
        _log(f"resuming UNet from step {start}")
    rng = np.random.default_rng(seed + start)
    g = torch.Generator().manual_seed(seed + start)
    alphas = sched.alphas_cumprod
    snr_all = (alphas / (1 - alphas)).to(dev)
    p_kind = kind_sampler(scenes, kind_share) if kind_share else None
    t0 = time.time()
    prev = 0.0
    for step in range(start, min(steps, stop_at or steps)):
        for pg in opt.param_groups:
            pg["lr"] = _lr(step, steps, lr)
        idx = rng.choice(len(scenes), batch, p=p_kind) if kind_share else rng.integers(0, len(scenes), batch)
        caps = [_train_caption(scenes[i], rng) for i in idx]
        ids = tok(caps, padding="max_length", max_length=M.MAX_TOKENS, truncation=True, return_tensors="pt").input_ids
        it = torch.from_numpy(idx)
        z = (lat_mean[it] + lat_std[it] * torch.randn(lat_mean[it].shape, generator=g)) * sf
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=g)
        noisy = sched.add_noise(z, noise, t)
        noisy, noise, t, ids = noisy.to(dev), noise.to(dev), t.to(dev), ids.to(dev)
        cond = te(ids).last_hidden_state
        pred = unet(noisy, t, cond).sample
        snr = snr_all[t]
        w = torch.clamp(snr, max=snr_gamma) / snr  # min-SNR-gamma weights for epsilon prediction
        loss = (w * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(step)
        prev = 0.98 * prev + 0.02 * loss.item() if step > start else loss.item()
        if (step + 1) % 50 == 0:
            el = time.time() - t0
            eta = el / (step + 1 - start) * (steps - step - 1)
            _log(f"unet step {step + 1}/{steps} loss {prev:.4f} {el:.0f}s eta {eta / 60:.1f} min")
        if (step + 1) % 250 == 0 or step + 1 in (steps, stop_at):
            st = {f"unet.{k}": v for k, v in unet.state_dict().items()}
            st |= {f"te.{k}": v for k, v in te.state_dict().items()}
            st |= {f"ema.{i}": s for i, s in enumerate(ema.shadow)}
            _save_state(work / "unet_ckpt.safetensors", st)
            with atomic_path(work / "unet_opt.pt") as tmp:
                torch.save(opt.state_dict(), tmp)
            write_json(work / "unet_state.json", {"step": step + 1, "seconds": round(before + time.time() - t0, 1),
                                                  "steps_total": steps, "batch": batch, "lr": lr,
                                                  "kind_share": kind_share or "uniform", "device": str(dev),
                                                  "init_from": str(init_from) if init_from else None})


def export_pipeline(work: Path, out: Path, use_ema: bool = True) -> Path:
    """Assemble the EMA weights into a diffusers StableDiffusionPipeline folder (atomic)."""
    from diffusers import StableDiffusionPipeline

    from ..models.tokenizer import load_world_tokenizer
    from ..utils.io import atomic_dir

    work = Path(work)
    vae = _load_vae(work)
    tok = load_world_tokenizer()
    te, unet = M.make_text_encoder(tok), M.make_unet()
    st = _load_state(work / "unet_ckpt.safetensors")
    unet.load_state_dict({k[5:]: v for k, v in st.items() if k.startswith("unet.")})
    te.load_state_dict({k[3:]: v for k, v in st.items() if k.startswith("te.")})
    if use_ema:
        params = list(unet.parameters()) + list(te.parameters())
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(st[f"ema.{i}"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=M.make_sample_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    info = {"vae": json.loads((work / "vae_state.json").read_text()),
            "unet": json.loads((work / "unet_state.json").read_text()), "ema": use_ema}
    prev = Path(str(info["unet"].get("init_from") or "")) / "igmu_training.json"
    if info["unet"].get("init_from") and prev.is_file():  # the run this one continued from
        info["init"] = json.loads(prev.read_text())
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        (tmp / "igmu_training.json").write_text(json.dumps(info, indent=1))
    return Path(out)
