"""Guided sampling, written once: the loop that methods use to draw latents of a concept, partial
trajectories for training latents x_t, and pools of whole trajectories.

Classifier-free guidance (Ho & Salimans 2022):  out = out(x, "") + g (out(x, c) - out(x, ""))  in the
denoiser's own output space (a guidance-distilled FLUX.1 takes g as an input instead: Adapter.guided),
stepped with a fresh copy of the pipeline's own scheduler, its timesteps set as the pipeline sets them.
"""
from __future__ import annotations

import inspect

import torch

from ..errors import UserError
from .arch import adapter_for


def cfg_noise(pipe, model, x, t, cond, uncond, guidance: float) -> torch.Tensor:
    """The guided model output the family samples with (Adapter.guided): classifier-free guidance,
    uncond + g (cond - uncond) in one batched denoiser call."""
    return adapter_for(pipe).guided(model, x, t, cond, uncond, guidance)


def guided_and_halves(a, model, x, t, cond, uncond, guidance: float, halves: bool):
    """(the guided output the family samples with, its (unconditional, conditional) outputs at x or None).
    With classifier-free guidance (Adapter.cfg_sampling) the halves are those of the sampler's own call;
    otherwise (FLUX.1) `halves=True` costs two more passes."""
    if a.cfg_sampling:
        u, c = a.halves(model, x, t, cond, uncond)
        return u + guidance * (c - u), (u, c)
    eps = a.guided(model, x, t, cond, uncond, guidance)
    return eps, (a.halves(model, x, t, cond, uncond) if halves else None)


@torch.no_grad()
def sample_latents(pipe, model, cond, uncond, steps: int, guidance: float, generator=None, noise=None,
                   stop: int | None = None, on_step=None, on_output=None):
    """Classifier-free-guided sampling with a fresh copy of the pipeline's own scheduler.

    Starts from `noise` if given, else from noise drawn with `generator`; runs the first `stop` of `steps`
    steps (all when None), calling `on_step(k, t, x_in)` before each denoiser call with the scaled model
    input x_in (e.g. to label recorded activations, or to keep the trajectory), and `on_output(k, u, c)`
    with the unconditional and conditional outputs at x_in (guided_and_halves). `model`: the denoiser
    (None: the pipeline's). Returns (latents, scheduler). The one sampling loop that ESD, SPM, FMN, MACE,
    ConceptPrune and the attacks use to draw latents of a concept.
    """
    a = adapter_for(pipe)
    sched = a.sampling_scheduler()
    if noise is None:
        noise = torch.randn(a.latent_shape(cond.shape[0]), generator=generator)
    a.set_timesteps(sched, steps, tuple(noise.shape[-2:]))
    x = noise.to(cond.device, cond.dtype) * a.init_noise_sigma(sched)
    extra = {"generator": generator} if generator is not None and "generator" in inspect.signature(
        sched.step).parameters else {}
    for k, t in enumerate(sched.timesteps[:stop]):
        x_in = a.scale_model_input(sched, x, t)
        if on_step is not None:
            on_step(k, t, x_in)
        eps, uc = guided_and_halves(a, model, x_in, t, cond, uncond, guidance, on_output is not None)
        if on_output is not None:
            on_output(k, *uc)
        x = sched.step(eps, t, x, **extra).prev_sample
    return x, sched


def sample_until(pipe, model, cond, uncond, steps: int, stop: int, guidance: float, generator) -> tuple:
    """Run the pipeline's sampler for `stop` of `steps` steps from seeded noise.

    Returns (x_t, t): the partially denoised latents (scaled as the denoiser's input) and the timestep they
    sit at. This is how ESD and its descendants draw training latents of the concept.
    """
    x, sched = sample_latents(pipe, model, cond, uncond, steps, guidance, generator, stop=stop)
    t = sched.timesteps[stop]
    return adapter_for(pipe).scale_model_input(sched, x, t), t


class PartialTrajectories:
    """Many partial sampling runs of a FROZEN model, advanced together. Item i is the sampler's state after
    `stops[i]` of `steps` steps from noise drawn with `generators[i]`, exactly what
    `sample_until(..., stop=stops[i], generator=generators[i])` computes alone; `take(i)` gives

        (x_t, t, out_uncond, out_cond)

    x_t and t as sample_until returns them, and the denoiser's unconditional and conditional outputs at
    (x_t, t). With classifier-free guidance these are the two halves of the guided call the sampler makes
    at that step, so a loss that needs eps(x_t, "", t) and eps(x_t, c, t) (ESD's e_0 and e_c) gets them
    from that same call (FLUX.1, guidance-distilled, needs one more batched call for them).

    Why: when the model that samples x_t does not change during training, the trajectories of future
    iterations can be drawn ahead of the updates. Up to `width` trajectories are in flight at once and one
    denoiser call per tick takes all of them (2 x width rows with guidance); a finished trajectory's slot
    goes to the next one at once ("continuous batching"), so no step is computed that the one-at-a-time
    loop would not compute. Each trajectory keeps its own copy of the scheduler (they sit at different
    steps) and its own generator (initial noise, then a stochastic sampler's step noise, in the order the
    one-at-a-time loop draws them), so it follows its unbatched run up to the rounding of batched kernels.
    width=1 runs them one after the other.

    share=m > 1 (an opt-in trade, not the one-at-a-time loop): item i is read off trajectory i mod T,
    T = ceil(n / m), at its own stop, so m items (T apart) share one trajectory and its noise
    (generators[i mod T]). Every item keeps its distribution (a frozen-model sample stopped at its drawn
    step); items that share a trajectory are no longer independent. A trajectory runs to the largest stop
    among its items: about 2 (50 m / (m + 1) + 1) / m denoiser rows per item at 50 steps, against 2 (24.5 + 1)
    for m = 1. `take` must be called with increasing i (trajectories are computed lazily, in order).
    """

    def __init__(self, pipe, model, cond: torch.Tensor, uncond: torch.Tensor, steps: int, stops: list[int],
                 guidance: float, generators: list[torch.Generator], width: int = 32, share: int = 1):
        n = len(stops)
        if len(generators) != n:
            raise ValueError("one generator per item")
        if any(not 0 <= s < steps for s in stops):
            raise ValueError(f"stops must lie in [0, {steps})")
        self.a = adapter_for(pipe)
        self.model, self.steps, self.guidance, self.width = model, steps, guidance, max(1, int(width))
        self.T = -(-n // max(1, int(share)))  # trajectories
        self.items = [list(range(j, n, self.T)) for j in range(self.T)]  # the items of trajectory j
        self.cond, self.uncond = cond, uncond
        self.stops, self.gens = list(stops), list(generators)
        self.next_traj = 0
        self.active: list[dict] = []
        self.done: dict[int, tuple] = {}
        probe = self.a.sampling_scheduler()
        self._step_takes_generator = "generator" in inspect.signature(probe.step).parameters

    def _start(self, j: int) -> dict:
        a = self.a
        sched = a.sampling_scheduler()
        noise = torch.randn(a.latent_shape(1), generator=self.gens[j])
        a.set_timesteps(sched, self.steps, tuple(noise.shape[-2:]))
        x = noise.to(self.cond.device, self.cond.dtype) * a.init_noise_sigma(sched)
        return {"j": j, "sched": sched, "x": x, "k": 0, "last": max(self.stops[i] for i in self.items[j])}

    def _conds(self, rows):
        cond = self.cond if self.cond.shape[0] == 1 else self.cond[[r["j"] for r in rows]]
        return cond.expand(len(rows), -1, -1), self.uncond.expand(len(rows), -1, -1)

    @torch.no_grad()
    def _tick(self) -> None:
        a = self.a
        while len(self.active) < self.width and self.next_traj < self.T:
            self.active.append(self._start(self.next_traj))
            self.next_traj += 1
        rows = self.active
        ts = [r["sched"].timesteps[r["k"]] for r in rows]
        x_in = torch.cat([a.scale_model_input(r["sched"], r["x"], t) for r, t in zip(rows, ts)])
        t = torch.stack([torch.as_tensor(t).reshape(()) for t in ts]).to(x_in.device)
        hit = [n for n, r in enumerate(rows) if any(self.stops[i] == r["k"] for i in self.items[r["j"]])]
        go = [n for n, r in enumerate(rows) if r["k"] < r["last"]]
        if a.cfg_sampling:  # one call: the sampler's guided step and the outputs of the rows that stop here
            eps, (u, c) = guided_and_halves(a, self.model, x_in, t, *self._conds(rows), self.guidance, True)
            halves = {n: (u[n:n + 1], c[n:n + 1]) for n in hit}
            eps = {n: eps[n:n + 1] for n in go}
        else:
            halves, steps = {}, {}
            if hit:
                u, c = a.halves(self.model, x_in[hit], t[hit], *self._conds([rows[n] for n in hit]))
                halves = {n: (u[m:m + 1], c[m:m + 1]) for m, n in enumerate(hit)}
            if go:
                e = a.guided(self.model, x_in[go], t[go], *self._conds([rows[n] for n in go]), self.guidance)
                steps = {n: e[m:m + 1] for m, n in enumerate(go)}
            eps = steps
        for n in hit:
            r = rows[n]
            for i in self.items[r["j"]]:
                if self.stops[i] == r["k"]:
                    self.done[i] = (x_in[n:n + 1].clone(), ts[n], halves[n][0].clone(), halves[n][1].clone())
        for n in go:
            r = rows[n]
            extra = {"generator": self.gens[r["j"]]} if self._step_takes_generator else {}
            r["x"] = r["sched"].step(eps[n], ts[n], r["x"], **extra).prev_sample
            r["k"] += 1
        self.active = [rows[n] for n in go]

    def take(self, i: int) -> tuple:
        """(x_t, t, out_uncond, out_cond) of item i (1 x C x h x w each, t a scalar timestep)."""
        while i not in self.done:
            if not self.active and self.next_traj >= self.T:
                raise IndexError(f"item {i} was already taken or does not exist")
            self._tick()
        return self.done.pop(i)


@torch.no_grad()
def trajectory_pool(pipe, model, cond: torch.Tensor, uncond: torch.Tensor, steps: int, guidance: float,
                    generator: torch.Generator, outputs: bool = False) -> tuple:
    """Every intermediate latent of one guided sampling run per row of `cond` (the pipeline's own sampler).

    Returns (x, t): x is steps x N x C x h x w, x[k] the model input after k sampler steps (what
    sample_until(..., stop=k) returns for the same noise), and t (steps,) the timestep it sits at.
    outputs=True returns (x, t, u, c) with the model's unconditional and conditional outputs at every x[k]
    (steps x N x C x h x w each; with classifier-free guidance the two halves of the sampler's own call
    there), so a method that needs the frozen model's predictions on the pool (AdvUnlearn) makes no
    further call."""
    seen, outs = [], []
    sample_latents(pipe, model, cond, uncond.expand(len(cond), -1, -1), steps, guidance, generator,
                   on_step=lambda _k, t, x_in: seen.append((x_in.detach().clone(), t)),
                   on_output=(lambda _k, u, c: outs.append((u, c))) if outputs else None)
    x = torch.stack([s[0] for s in seen])
    t = torch.stack([torch.as_tensor(s[1]).reshape(()) for s in seen])
    if not outputs:
        return x, t
    return x, t, torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


@torch.no_grad()
def concept_latents(pipe, model, prompts: list[str], n: int, steps: int, guidance: float, seed: int,
                    batch: int = 32) -> tuple[torch.Tensor, list[int]]:
    """Clean latents x0 of n samples per prompt drawn with `model` (the frozen original denoiser): the
    "images of the concept" that fine-tuning methods and attacks train on. Returns (latents N x C x h x w,
    prompt index of each)."""
    a = adapter_for(pipe)
    which = [i for i, _ in enumerate(prompts) for _ in range(n)]
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(0, len(which), batch):
        idx = which[s:s + batch]
        embs, _ = a.encode([prompts[i] for i in idx] + [""])
        cond, null = embs[:-1], embs[-1:].expand(len(idx), -1, -1)
        x, _ = sample_latents(a, model, cond, null, steps, guidance, gen)
        out.append(x)
    return torch.cat(out), which


@torch.no_grad()
def pipeline_images(pipe, prompts: list[str], negative_prompts: list[str] | None, latents: torch.Tensor,
                    steps: int, guidance: float, height: int, width: int, conditioning_at=None, **extra):
    """The plain pipeline call from given initial latents (N x C x h x w): float N x H x W x 3 in [0, 1] (what
    generation does without an inference-time method, and what such a method's hook falls back to).

    conditioning_at(step) -> N x L x D, if given, is the prompts' conditioning the denoiser reads at each
    sampler step (SAFREE and SEOT switch between an edited and the plain encoding during sampling); the
    negative prompts are encoded as usual. It goes through the pipeline's own loop (callback_on_step_end
    replaces the prompt embeddings before the next step), so everything else is the plain call's. SD 1.x/2.x
    pipelines only (their conditioning is the prompt embeddings alone)."""
    a = adapter_for(pipe)
    if conditioning_at is None:
        return a.pipeline_images(prompts, negative_prompts, latents, steps, guidance, height, width, **extra)
    if a.family != "sd":
        raise UserError(f"switching the prompt conditioning while sampling is implemented for Stable Diffusion "
                        f"1.x/2.x pipelines only, not {a.label}")
    negative = a.encode(negative_prompts or [""] * len(prompts))[0]

    def next_conditioning(_pipe, i, _t, kwargs):
        cond = conditioning_at(i + 1).to(kwargs["prompt_embeds"].device, kwargs["prompt_embeds"].dtype)
        if _pipe.do_classifier_free_guidance:
            return {"prompt_embeds": torch.cat([kwargs["negative_prompt_embeds"], cond])}
        return {"prompt_embeds": cond}
    return pipe(prompt_embeds=conditioning_at(0), negative_prompt_embeds=negative, latents=a.pipeline_latents(latents),
                num_inference_steps=steps, guidance_scale=guidance, height=height, width=width, output_type="np",
                callback_on_step_end=next_conditioning,
                callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"], **extra).images
