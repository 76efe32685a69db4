"""The real metric networks, registered with their cards (registry.py): Inception and CLIP features for FID/KID,
CLIP score from a local CLIP, LPIPS. Weights always come from local paths; nothing is downloaded."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..errors import UserError
from .registry import MetricOptions, register


def _path_arg(spec: str, what: str) -> str:
    ref = spec.split(":", 1)[1].strip() if ":" in spec else ""
    if not ref:
        raise UserError(f"{what} {spec!r} needs a local model folder: {spec.split(':')[0]}:/path/to/clip")
    return ref


@register("features", "inception", {
    "what": "Inception-v3 pool3 features (2048-d): the standard FID/KID network (TF graph 2015-12-05)",
    "weights": "--fid-weights PATH: pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or "
               "weights-inception-2015-12-05-6726825d.pth (torch-fidelity), read with weights_only=True",
    "source": "Heusel et al. 2017; architecture as torch-fidelity's FeatureExtractorInceptionV3 (evaluation/inception.py)",
    "validated": "the standard FID network; its outputs are not re-checked against torch-fidelity here "
                 "(no weights can be downloaded on the build machine)"})
def _inception(spec: str, opts: MetricOptions):
    from .inception import load_fid_inception

    if not opts.fid_weights:
        raise UserError("--features inception needs --fid-weights PATH (pt_inception-2015-12-05-6726825d.pth)")
    return load_fid_inception(opts.fid_weights, opts.device)


class ClipFeatures(nn.Module):
    """Projected CLIP image embeddings (not normalised, as clean-fid's CLIP features) as a torchmetrics feature."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.num_features = int(clip.model.config.projection_dim)
        self.weights_sha256 = clip.weights_sha256

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.image_embeds(x.permute(0, 2, 3, 1).cpu().numpy()).double()


@register("features", "clip", {
    "what": "CLIP image embeddings (projected, unnormalised) of a local transformers CLIP, as FID/KID features",
    "weights": "clip:PATH, a CLIP folder saved with save_pretrained", "arg": "path",
    "source": "clean-fid's CLIP-feature FID (Kynkaanniemi et al. 2023 argue for CLIP features)",
    "validated": "depends on the CLIP model"})
def _clip_features(spec: str, opts: MetricOptions):
    from .clip_judge import ClipModel

    return ClipFeatures(ClipModel(_path_arg(spec, "features"), device=opts.device))


class ClipScorer:
    def __init__(self, clip):
        self.clip = clip

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        return self.clip.clip_score(images, texts)


@register("clip-score", "clip", {
    "what": "CLIP score, max(100 * cos(image, text), 0) per pair, by torchmetrics' CLIPScore update on a local CLIP",
    "weights": "clip:PATH, a CLIP folder saved with save_pretrained (IGMU uses openai/clip-vit-base-patch16)",
    "arg": "path", "source": "Hessel et al. 2021 (w = 1, as torchmetrics); torchmetrics 1.9",
    "validated": "depends on the CLIP model"})
def _clip_score(spec: str, opts: MetricOptions):
    from .clip_judge import ClipModel

    return ClipScorer(ClipModel(_path_arg(spec, "--clip"), device=opts.device))


@register("perceptual", "lpips", {
    "what": "LPIPS v0.1 (learned linear layers shipped in torchmetrics) on AlexNet (default) or VGG16 features",
    "weights": "--lpips-weights PATH: torchvision's alexnet-owt-7be5be79.pth (or vgg16-397923af.pth with "
               "--lpips-net vgg or spec lpips:vgg), read with weights_only=True",
    "source": "Zhang et al. 2018; torchmetrics' LPIPS network with the backbone built in evaluation/lpips.py",
    "validated": "the published LPIPS weights; images under 64 px are upsampled to 64 first"})
def _lpips(spec: str, opts: MetricOptions):
    from .lpips import LPIPS

    net = spec.split(":", 1)[1].strip() if ":" in spec else opts.lpips_net
    if not opts.lpips_weights:
        raise UserError(f"--perceptual {spec} needs --lpips-weights PATH (torchvision's "
                        f"{'vgg16-397923af.pth' if net == 'vgg' else 'alexnet-owt-7be5be79.pth'})")
    return LPIPS(opts.lpips_weights, net=net, device=opts.device)
