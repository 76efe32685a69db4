"""The one fine-tuning loop, and what it owns for every fine-tuning method.

A method supplies its loss, as open-unlearning's trainers override one `compute_loss`; this module owns
the rest: which parameters train (parameter selection), the optimizer (Adam or AdamW with the method's
cited betas / weight decay), the steps, gradient clipping, the learning-rate schedule, the progress bar,
device and precision, gradient checkpointing, and which tensors changed (what the artifact stores).

    params = parameter_group(unet, "crossattn_kv")
    loop = FineTune(params, AdamW(lr=cfg.lr, weight_decay=cfg.weight_decay), max_grad_norm=1.0, snapshot=True)
    loop.run(cfg.iterations, compute_loss, advance)    # compute_loss(step) -> loss or (loss, {name: value})
    return loop.changed("unet")

A step: compute_loss(step) (a NaN or infinite loss stops the loop at once: NonFiniteError naming the step);
zero the gradients; backward (or the method's own `backward` hook, e.g.
DoCo's gradient surgery); the `adjust_gradients` hook (SalUn's saliency mask, ScissorHands' projection);
clip to max_grad_norm; optimizer step; schedule step; the `after_step` hook (DoCo's discriminator). A step
whose loss is None, or does not require grad, makes no update (a warm-up step; an empty mask).

Precision, the standard mixed-precision recipe, from the running command's runtime (utils/device.py,
`--dtype`): the model is loaded in that dtype; in float16 or bfloat16 the trained parameters are kept
in float32 (master weights: the optimizer updates them in float32), compute_loss and the hooks run under
torch.autocast in that dtype, and in float16 the default backward is loss-scaled (torch.amp.GradScaler;
the gradients are unscaled before the hooks and clipping, and a step with inf/nan gradients is skipped).
A method with its own `backward` hook (DoCo) gets unscaled gradients and no loss scaling: use bfloat16
there rather than float16. In float32 nothing of this applies and the loop is exactly the plain one.
`--gradient-checkpointing` checkpoints the modules a method names in `checkpoint` (the trained UNet or
text encoder) for the duration of the loop.

Batch samplers (torch or numpy seeded, as each method's official DataLoader) live here too.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch

from ..errors import NonFiniteError, UserError
from ..utils.device import current_runtime

# ---------------------------------------------------------------- parameter selection


def module_parameters(model, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """Parameters of the Linear/Conv2d modules that ESD-style fine-tuning updates (norm layers never).

    'xattn': inside cross-attention (attn2); 'noxattn': everything else; 'full': all;
    'xattn-strict': only attn2 to_k/to_v (names as in the official ESD code).
    On a transformer denoiser (MMDiT: SD3, FLUX), which has no cross-attention, the text meets the image in
    the joint attention of every block: 'xattn' selects every Linear inside an attention module ('attn' in
    the name, rohitgandikota/erasing esd_flux.py's esd-x), 'xattn-strict' their to_k/to_v (its esd-x-strict),
    'noxattn' everything else.
    """
    out = []
    joint = not any(getattr(m, "is_cross_attention", False) for m in model.modules())  # no cross-attention: MMDiT
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        inside = (".attn." if joint else ".attn2.") in f".{name}."
        pick = {"xattn": inside, "noxattn": not inside, "full": True,
                "xattn-strict": inside and name.rsplit(".", 1)[-1] in ("to_k", "to_v")}[which]
        if pick:
            out += [(f"{name}.{n}", p) for n, p in module.named_parameters(recurse=False)]
    if not out:
        raise UserError(f"this model has no parameters of kind {which!r} to fine-tune")
    return out


def parameter_group(model, group: str) -> list[tuple[str, torch.nn.Parameter]]:
    """UNet parameters of a named group, by parameter name: 'crossattn_kv' (attn2.to_k / attn2.to_v, the
    official Concept Ablation and DoCo "cross-attn" group), 'xattn' (every parameter inside attn2),
    'noxattn' (everything else except the time embedding and the output layers, as Selective Amnesia's
    official ddpm_forget.py: name not in attn2, 'time_embed' or 'out.'), 'full' (all).
    (module_parameters' 'noxattn' is ESD's: Linear/Conv2d weights outside attn2, norms excluded.)"""
    named = list(model.named_parameters())
    if group == "crossattn_kv":
        out = [(n, p) for n, p in named if ".attn2.to_k." in f".{n}" or ".attn2.to_v." in f".{n}"]
    elif group == "xattn":
        out = [(n, p) for n, p in named if ".attn2." in f".{n}"]
    elif group == "noxattn":
        out = [(n, p) for n, p in named if ".attn2." not in f".{n}"
               and not n.startswith(("time_embedding.", "conv_norm_out.", "conv_out."))]
    elif group == "full":
        out = named
    else:
        raise UserError(f"unknown parameter group {group!r}")
    if not out:
        raise UserError(f"this model has no parameters of group {group!r} to fine-tune")
    return out


def text_encoder_parameters(te, component: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
    """The official AdvUnlearn 'text_encoder_full' choice: every parameter of the transformer layers
    (component 'all', or only the MLPs 'ffn' / self-attentions 'attn') and, for 'all', the final layer norm."""
    out = []
    for name, p in te.named_parameters():
        plain = name[len("text_model."):] if name.startswith("text_model.") else name
        if plain.startswith("encoder."):
            pick = {"all": True, "ffn": ".mlp." in plain, "attn": ".self_attn." in plain}[component]
        else:
            pick = plain.startswith("final_layer_norm") and component == "all"
        if pick:
            out.append((name, p))
    if not out:
        raise UserError("this model's text encoder has no CLIP-style transformer layers (encoder.*), "
                        "so there is nothing to train in it")
    return out


def freeze_except(model, params) -> None:
    """Eval mode, every parameter of `model` frozen except `params` ((name, p) pairs or plain parameters)."""
    model.eval().requires_grad_(False)
    for p in _plain(params):
        p.requires_grad_(True)


def _plain(params) -> list[torch.nn.Parameter]:
    return [p[1] if isinstance(p, tuple) else p for p in params]


# ---------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class Optimizer:
    """An optimizer choice with its hyper-parameters (each method cites them from its paper or code)."""
    kind: Literal["adam", "adamw"]
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)  # torch's and the official codes' default
    eps: float = 1e-8
    weight_decay: float = 0.0

    def build(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[self.kind]
        return cls(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay)


def Adam(lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> Optimizer:
    return Optimizer("adam", lr, tuple(betas), eps, weight_decay)


def AdamW(lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01) -> Optimizer:
    """torch.optim.AdamW; its default weight decay 0.01 (the official codes' AdamW default as well)."""
    return Optimizer("adamw", lr, tuple(betas), eps, weight_decay)


# ---------------------------------------------------------------- the loop


class FineTune:
    """The fine-tuning loop (see the module docstring). `params`: (name, parameter) pairs or parameters;
    they are what the optimizer updates. snapshot=True keeps their starting values for `changed`.
    `checkpoint`: the models being trained (a UNet, a text encoder): checkpointed when the runtime asks for
    gradient checkpointing, and in half precision every layer of them that holds a trained parameter keeps
    all its parameters in float32 (a norm layer whose weight trains but whose bias does not would otherwise
    mix dtypes inside one operation)."""

    def __init__(self, params, optimizer: Optimizer, *, max_grad_norm: float | None = None,
                 lr_schedule: Callable | None = None, backward: Callable | None = None,
                 adjust_gradients: Callable | None = None, after_step: Callable | None = None,
                 snapshot: bool = False, checkpoint=()):
        params = list(params)
        self.named = [p if isinstance(p, tuple) else (str(i), p) for i, p in enumerate(params)]
        self.params = [p for _, p in self.named]
        runtime = current_runtime()
        self.amp_dtype = runtime.dtype if runtime.half else None
        if self.amp_dtype is not None:  # fp32 master weights
            trained = {id(p) for p in self.params}
            for model in checkpoint:
                for layer in model.modules():
                    own = list(layer.parameters(recurse=False))
                    if any(id(p) in trained for p in own):
                        for p in own:
                            p.data = p.data.float()
            for p in self.params:
                if p.dtype in (torch.float16, torch.bfloat16):
                    p.data = p.data.float()
        self.device_type = self.params[0].device.type if self.params else "cpu"
        self.scaler = (torch.amp.GradScaler(self.device_type)
                       if self.amp_dtype == torch.float16 and backward is None else None)
        self.checkpoint = list(checkpoint) if runtime.gradient_checkpointing else []
        self.optimizer = optimizer.build(self.params)
        self.schedule = lr_schedule(self.optimizer) if lr_schedule is not None else None
        self.max_grad_norm = max_grad_norm
        self.backward = backward
        self.adjust_gradients = adjust_gradients
        self.after_step = after_step
        self.before = {n: p.detach().clone() for n, p in self.named} if snapshot else None
        self.step = 0  # optimizer steps taken so far, over every run()

    def autocast(self):
        """torch.autocast in the runtime's half dtype (a no-op in float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.amp_dtype)

    def run(self, steps: int, compute_loss: Callable, advance: Callable | None = None) -> None:
        """`steps` calls of compute_loss(i) (i counts from 0 in each run), each followed by an update."""
        with _checkpointing(self.checkpoint):
            for i in range(steps):
                with self.autocast():
                    out = compute_loss(i)
                loss, info = out if isinstance(out, tuple) else (out, {})
                if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
                    # stop before an update spreads it into every trained weight (erase.run_erase names the options)
                    v = loss.detach().reshape(-1)
                    raise NonFiniteError(f"the training loss became {v[~torch.isfinite(v)][0].item()} at step "
                                         f"{i + 1} of {steps}", step=i + 1)
                if loss is not None and loss.requires_grad:
                    self._update(loss)
                if self.after_step is not None:
                    with self.autocast():
                        self.after_step(i)
                if advance is not None:
                    advance(1, **({} if loss is None else {"loss": float(loss.detach())}), **info)

    def _update(self, loss) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.backward is not None:
            with self.autocast():
                self.backward(loss)
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.adjust_gradients is not None:
            self.adjust_gradients()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)  # skipped when the gradients hold inf/nan
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
        self.step += 1

    # ---- what changed ----------------------------------------------------------------------------------------

    def tensors(self, component: str, updated_only: bool = False) -> dict:
        """{"<component>.<name>": value (cpu)} of every trained parameter; updated_only: only those that
        received a gradient in the last step (an optimizer never moves the others)."""
        return {f"{component}.{n}": p.detach().cpu().clone() for n, p in self.named
                if not updated_only or p.grad is not None}

    def changed(self, component: str) -> dict:
        """Tensors whose value moved from the snapshot taken at construction (snapshot=True)."""
        if self.before is None:
            raise RuntimeError("FineTune(..., snapshot=True) is needed for changed()")
        return changed_tensors(self.named, self.before, component)


def changed_tensors(named_params, before: dict, component: str = "unet") -> dict:
    """{"<component>.<name>": tensor} for the parameters whose value moved from `before[name]` (compared in
    float32, so a float32 master weight is compared with its float16/bfloat16 original exactly)."""
    return {f"{component}.{n}": p.detach().cpu().clone() for n, p in named_params
            if not torch.equal(_f32(p), _f32(before[n]))}


def _f32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().cpu()
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


@contextlib.contextmanager
def _checkpointing(modules):
    """Gradient checkpointing on `modules` (diffusers or transformers models) for the duration of the block."""
    done = []
    try:
        for m in modules:
            if hasattr(m, "enable_gradient_checkpointing"):  # diffusers ModelMixin
                m.enable_gradient_checkpointing()
                done.append((m, m.disable_gradient_checkpointing, None))
            elif hasattr(m, "gradient_checkpointing_enable"):  # transformers: only active in train mode
                was = m.training
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                m.train()  # CLIP text encoders have no dropout (p = 0), so train mode computes the same
                done.append((m, m.gradient_checkpointing_disable, was))
            else:
                raise UserError(f"--gradient-checkpointing: a {type(m).__name__} cannot be checkpointed")
        yield
    finally:
        for m, disable, was in done:
            disable()
            if was is not None:
                m.train(was)


# ---------------------------------------------------------------- batch samplers


class EpochSampler:
    """Mini-batches of indices into n items, reshuffled each epoch with torch.randperm (a DataLoader with
    shuffle=True); CA, DoCo and SA."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.gen, self.order = n, generator, []

    def take(self, k: int) -> torch.Tensor:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.order.pop(0))
        return torch.tensor(out)


def epoch_batches(n: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One shuffled pass over n items in batches (the last one may be smaller); SalUn, EraseDiff, ScissorHands."""
    order = rng.permutation(n)
    return [order[i:i + batch] for i in range(0, n, batch)]


class cycling_batches:
    """Endless shuffled batches over n items (the retain loader the official scripts re-iterate)."""

    def __init__(self, n: int, batch: int, rng: np.random.Generator):
        self.n, self.batch, self.rng, self.queue = n, batch, rng, []

    def next(self) -> np.ndarray:
        if not self.queue:
            self.queue = epoch_batches(self.n, self.batch, self.rng)
        return self.queue.pop(0)
