"""LPIPS (Zhang et al. 2018) through torchmetrics, with the backbone built here so local torchvision weights load.

torchmetrics ships LPIPS's learned linear layers (torchmetrics/functional/image/lpips_models/{alex,vgg}.pth, the
v0.1 weights of the lpips package) and its LPIPS network; it takes the backbone's convolution stack from
torchvision, which cannot be imported on these machines (its wheels link CUDA torch). The stack is only
torchvision's `features` Sequential of AlexNet or VGG16, so it is written out below with torchvision's exact
layer indices: torchvision's own weight files (alexnet-owt-7be5be79.pth, vgg16-397923af.pth) load into it
unchanged (read with weights_only=True: a plain state dict, no code unpickled). It is handed to torchmetrics'
LPIPS network through the one function that network calls to get it (`_get_tv_model_features`), swapped for
the duration of the construction; everything else (input scaling, unit-normalising, the linear layers, the
spatial average) is torchmetrics' code.

Images smaller than 64 px are upsampled to 64 x 64 first (AlexNet's stride-4 11x11 stem and three max pools
leave nothing of smaller images); the result records it.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

NETS = {"alex": ("alexnet", "alexnet-owt-7be5be79.pth"), "vgg": ("vgg16", "vgg16-397923af.pth")}
MIN_SIDE = 64


def backbone(net: str) -> nn.Sequential:
    """torchvision's `features` stack of AlexNet ('alex') or VGG16 ('vgg'), same indices, random weights."""
    if net == "alex":
        return nn.Sequential(nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                             nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
                             nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
    if net == "vgg":  # configuration "D"
        layers, cin = [], 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        return nn.Sequential(*layers)
    raise UserError(f"unknown LPIPS backbone {net!r}; use alex or vgg")


def _load_state(path: str | Path, what: str) -> dict:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {path}: no such file")
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{what} {path} is not a PyTorch state dict ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(sd, dict):
        raise UserError(f"{what} {path} holds a {type(sd).__name__}, not a state dict")
    return sd


class LPIPS:
    """Per-pair LPIPS distance of uint8 N x H x W x 3 image pairs (torchmetrics' network, local backbone)."""

    def __init__(self, backbone_weights: str | Path, net: str = "alex", device: str | None = None, batch: int = 8):
        import torchmetrics.functional.image.lpips as tl

        if net not in NETS:
            raise UserError(f"unknown --lpips-net {net!r}; use alex or vgg")
        feats = backbone(net)
        sd = _load_state(backbone_weights, "--lpips-weights")
        sub = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        try:
            feats.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise UserError(f"--lpips-weights {backbone_weights} is not torchvision's {NETS[net][0]} "
                            f"({NETS[net][1]}): {str(e).splitlines()[-1].strip()[:140]}") from None
        swap = lambda name, pretrained=False: feats  # noqa: E731  (see the module docstring)
        with _swapped(tl, "_get_tv_model_features", swap):
            self.net = tl._NoTrainLpips(pretrained=False, net=net, pnet_rand=True)
        lin_path = Path(inspect.getfile(tl)).parent / "lpips_models" / f"{net}.pth"
        lin = torch.load(str(lin_path), map_location="cpu", weights_only=True)
        want = {k for k in self.net.state_dict() if k.startswith("lin") and not k.startswith("lins.")}
        if set(lin) != want:
            raise UserError(f"torchmetrics' LPIPS linear layers {lin_path} do not match its network; reinstall "
                            "torchmetrics==1.9.0")
        self.net.load_state_dict(lin, strict=False)
        self.device = device or "cpu"
        self.net.to(self.device).eval()
        self.kind, self.batch = net, batch
        self.backbone_weights = str(Path(backbone_weights).expanduser().resolve())

    @torch.no_grad()
    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.shape != b.shape:
            raise ValueError(f"LPIPS pairs need equal shapes, got {a.shape} and {b.shape}")
        out = []
        for i in range(0, len(a), self.batch):
            x, y = (torch.from_numpy(np.ascontiguousarray(z[i:i + self.batch])).permute(0, 3, 1, 2).float() / 255
                    for z in (a, b))
            if min(x.shape[-2:]) < MIN_SIDE:
                x, y = (F.interpolate(z, size=(MIN_SIDE, MIN_SIDE), mode="bilinear", align_corners=False)
                        for z in (x, y))
            d = self.net(x.to(self.device), y.to(self.device), normalize=True)
            out.append(d.reshape(len(x)).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros(0)


@contextlib.contextmanager
def _swapped(module, name, value):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)
