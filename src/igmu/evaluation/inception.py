"""The FID Inception-v3 network (pool3, 2048 features), defined here so that its standard weights load offline.

FID is defined on the pool3 features of the TensorFlow Inception-v3 graph of 2015-12-05 (Heusel et al. 2017).
pytorch-fid and torch-fidelity ship that graph's weights converted to a PyTorch state dict
(pt_inception-2015-12-05-6726825d.pth, weights-inception-2015-12-05-6726825d.pth; same layout: torchvision's
Inception3 names, 1008-class fc, no auxiliary head). Why a local definition:
  * torchvision cannot be imported on these machines (its wheels link CUDA torch), and pytorch-fid builds the
    network from torchvision;
  * torch-fidelity's FeatureExtractorInceptionV3 needs no torchvision, but its package __init__ does, and its
    constructor either downloads the weights or unpickles them (a full, not weights-only, load).
So the architecture is written out below with the same module names, and the weights are read from a LOCAL
file with torch.load(weights_only=True) (a plain state dict; no code is unpickled). It follows torch-fidelity's
extractor: TF1-exact bilinear resize to 299 x 299, (x - 128) / 128, the TF-compatible blocks (average pools
that exclude padding, max pool in the last block), features after the global average pool.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError

INPUT_SIZE = 299
WEIGHT_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")


class _Conv(nn.Module):  # torchvision's BasicConv2d: conv (no bias), batch norm (eps 1e-3), ReLU
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg(x):  # TensorFlow's average pool leaves the padding out of the mean
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _A(nn.Module):
    def __init__(self, cin, pool):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, kernel_size=1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, kernel_size=1), _Conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _Conv(cin, pool, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg(x))], 1)


class _B(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _C(nn.Module):
    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x))], 1)


class _D(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, kernel_size=1), _Conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = _Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class _E(nn.Module):
    def __init__(self, cin, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the graph's last block max-pools where the paper's average-pools
        self.branch1x1 = _Conv(cin, 320, kernel_size=1)
        self.branch3x3_1 = _Conv(cin, 384, kernel_size=1)
        self.branch3x3_2a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


def resize_like_tf1(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize as TensorFlow 1.x computes it (align_corners=False, no half-pixel offset): output pixel i
    samples input coordinate i * in / out. F.interpolate offsets by half a pixel, so it differs."""
    def axis(n_in):
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * (n_in / size)
        lo = pos.floor().long().clamp(max=n_in - 1)
        return lo, (lo + 1).clamp(max=n_in - 1), pos - lo.to(x.dtype)
    ylo, yhi, dy = axis(x.shape[2])
    xlo, xhi, dx = axis(x.shape[3])
    top = x[:, :, ylo][:, :, :, xlo] + (x[:, :, ylo][:, :, :, xhi] - x[:, :, ylo][:, :, :, xlo]) * dx
    bot = x[:, :, yhi][:, :, :, xlo] + (x[:, :, yhi][:, :, :, xhi] - x[:, :, yhi][:, :, :, xlo]) * dx
    return top + (bot - top) * dy.view(1, 1, -1, 1)


class FIDInception(nn.Module):
    """uint8 N x 3 x H x W (RGB, 0..255) -> float64 N x 2048 pool3 features."""
    num_features = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _A(192, 32), _A(256, 64), _A(288, 64)
        self.Mixed_6a = _B(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = _C(768, 128), _C(768, 160), _C(768, 160), _C(768, 192)
        self.Mixed_7a = _D(768)
        self.Mixed_7b, self.Mixed_7c = _E(1280, max_pool=False), _E(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # in the weight file; not used for FID features
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 N x 3 x H x W images, got {tuple(x.shape)} {x.dtype}")
        p = next(self.parameters())
        x = (resize_like_tf1(x.to(p.device, torch.float32), INPUT_SIZE) - 128) / 128
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3)).double().cpu()


def load_fid_inception(path: str | Path, device: str | None = None) -> FIDInception:
    """The FID Inception with its weights from a local file (a state dict; read with weights_only=True)."""
    p = Path(path).expanduser()
    names = " or ".join(WEIGHT_FILES)
    if not p.is_file():
        raise UserError(f"--fid-weights {path}: no such file; pass the FID Inception weights ({names})")
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"--fid-weights {path} is not a PyTorch state dict ({str(e).splitlines()[0][:120]}); "
                        f"pass {names}") from None
    if not isinstance(sd, dict):
        raise UserError(f"--fid-weights {path} holds a {type(sd).__name__}, not a state dict; pass {names}")
    net = FIDInception()
    sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise UserError(f"--fid-weights {path} does not fit the FID Inception ({str(e).splitlines()[-1].strip()[:120]}); "
                        f"pass {names}") from None
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise UserError(f"--fid-weights {path} does not fit the FID Inception ({'missing' if missing else 'unexpected'} "
                        f"tensor {bad!r}); pass {names}")
    return net.to(device or "cpu")
