"""The flow-matching forward process, in the interface methods already use for DDPM's (config,
add_noise at an integer timestep), so that the noising/target/loss code of noise.py serves both.

Rectified flow (SD3, FLUX; Esser et al. 2024, "Scaling Rectified Flow Transformers"):

    x_t = (1 - sigma_t) x_0 + sigma_t eps,   sigma_t = t / T,   the model predicts v = eps - x_0

Timesteps are on the scale the pipelines give their transformer, t in [0, T) with T = num_train_timesteps
(FlowMatchEulerDiscreteScheduler's timesteps are sigma * T); a training draw t ~ U{0..T-1} is uniform in
sigma, diffusers' SD3/FLUX training scripts' weighting_scheme "none" without their shift.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch

FLOW = "flow_prediction"  # the prediction-type name diffusers' flow-capable schedulers use


class FlowMatchTrainSchedule:
    """Forward noising of a flow-matching model at any timestep (the training counterpart of its sampler)."""

    def __init__(self, num_train_timesteps: int = 1000):
        self.config = SimpleNamespace(num_train_timesteps=int(num_train_timesteps), prediction_type=FLOW)

    def sigma(self, t, like: torch.Tensor) -> torch.Tensor:
        """sigma_t = t / T, shaped to broadcast over a batch like `like` (N x ...)."""
        s = torch.as_tensor(t, device=like.device).float() / self.config.num_train_timesteps
        s = s.reshape(-1) if s.dim() else s.reshape(1)
        return s.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        s = self.sigma(t, x0)
        return (1 - s) * x0 + s * noise

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def predicted_x0(self, xt: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
        return xt - self.sigma(t, xt) * v
