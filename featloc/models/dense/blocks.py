"""Building blocks shared by SAM-Net and CoAM: the backbone, the 2-D positional encoding, a
multi-head attention block on torch SDPA, grid helpers and the texture gate.

Coordinates: a map of h x w cells at stride s covers image pixels with cell (row a, col b)
centred at pixel ((b + 0.5) s - 0.5, (a + 0.5) s - 0.5) (project convention: the centre of
the top-left pixel is (0, 0)). "Cell units" are continuous (x, y) = (b, a) positions on a
map; `grid_sample(align_corners=False)` addresses them as u = 2 (x + 0.5) / w - 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..samfeat import ConvBlock
from .conf import BackboneConf


def pixels_to_cells(points: torch.Tensor, stride: int) -> torch.Tensor:
    return (points + 0.5) / stride - 0.5


def cells_to_pixels(points: torch.Tensor, stride: int) -> torch.Tensor:
    return (points + 0.5) * stride - 0.5


def cell_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[h*w, 2] (x, y) cell positions in row-major order (token order of a flattened map)."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], -1).reshape(-1, 2)


def sample_map(maps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear values of `maps` [B, C, h, w] at `points` [B, *P, 2] (cell units) ->
    [B, *P, C] float32; border padding (positions are clamped into the map), differentiable
    in both the maps and the positions.

    Always in float32: grid_sample takes the grid in the map's dtype, and a bfloat16 grid
    rounds positions to ~1/256 of the map side (more than a pixel at 640 px).
    """
    b, c, h, w = maps.shape
    shape = points.shape[1:-1]
    scale = points.new_tensor([2.0 / w, 2.0 / h], dtype=torch.float32)
    grid = ((points.float() + 0.5) * scale - 1).reshape(b, 1, -1, 2)
    with torch.autocast(maps.device.type, enabled=False):
        out = F.grid_sample(maps.float(), grid, mode="bilinear", padding_mode="border",
                            align_corners=False)  # [B, C, 1, P]
    return out[:, :, 0].transpose(1, 2).reshape(b, *shape, c)


def sinusoidal_encoding(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """[h, w, dim] 2-D sine/cosine encoding of cell positions (LoFTR style): dim/4
    geometric frequencies from 1 to 1/10000 rad per cell, sin and cos of x and of y."""
    n = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(n, device=device) / max(n, 1))
    pos = cell_grid(h, w, device).reshape(h, w, 2)
    x, y = pos[..., :1] * freq, pos[..., 1:] * freq
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], -1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., N, C] -> [..., heads, N, C / heads]"""
    return x.unflatten(-1, (heads, -1)).transpose(-2, -3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[..., heads, N, d] -> [..., N, heads * d]"""
    return x.transpose(-2, -3).flatten(-2)


class AttentionBlock(nn.Module):
    """x <- x + norm(MLP([x | norm(MHA(x, source))])) (LoFTR's encoder layer) on torch SDPA.

    x [..., N, C] attends to source [..., S, C]; leading dimensions are batch dimensions.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.merge = nn.Linear(dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(2 * dim, dim, bias=False))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.query(x), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.key_value(source).chunk(2, -1))
        message = self.norm1(self.merge(merge_heads(F.scaled_dot_product_attention(q, k, v))))
        return x + self.norm2(self.mlp(torch.cat([x, message], -1)))


class DenseBackbone(nn.Module):
    """A small CNN for CPU: stride-2 stages (conv-BN-ReLU x 2) to 1/2, 1/4 and 1/8, a 1x1
    projection to the coarse features, and a fine map at 1/2 built FPN-style from 1x1
    lateral projections of all three levels (no full-resolution 3x3 conv: the fine map is
    only sampled in small windows, where the fine attention mixes it).

    forward(image [B, 3|1, H, W] in [-1, 1], H and W multiples of 8) returns
    c2 [B, c2, H/2, W/2], c4, c8 (stage outputs), coarse [B, coarse_dim, H/8, W/8] and
    fine [B, fine_dim, H/2, W/2].
    """

    def __init__(self, conf: BackboneConf):
        super().__init__()
        self.conf = conf
        c2, c4, c8 = conf.channels
        cin = 1 if conf.grayscale else 3
        self.stage2 = nn.Sequential(ConvBlock(cin, c2, 2), ConvBlock(c2, c2))
        self.stage4 = nn.Sequential(ConvBlock(c2, c4, 2), ConvBlock(c4, c4))
        self.stage8 = nn.Sequential(ConvBlock(c4, c8, 2), ConvBlock(c8, c8))
        self.coarse = nn.Conv2d(c8, conf.coarse_dim, 1)
        self.lateral2 = nn.Conv2d(c2, conf.fine_dim, 1)
        self.lateral4 = nn.Conv2d(c4, conf.fine_dim, 1)
        self.lateral8 = nn.Conv2d(conf.coarse_dim, conf.fine_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.conf.grayscale and image.shape[1] == 3:
            image = image.mean(1, keepdim=True)
        c2 = self.stage2(image)
        c4 = self.stage4(c2)
        c8 = self.stage8(c4)
        coarse = self.coarse(c8)
        top = F.interpolate(self.lateral8(coarse), size=c4.shape[-2:], mode="bilinear",
                            align_corners=False) + self.lateral4(c4)
        fine = F.interpolate(top, size=c2.shape[-2:], mode="bilinear",
                             align_corners=False) + self.lateral2(c2)
        return {"c2": c2, "c4": c4, "c8": c8, "coarse": coarse, "fine": fine}


def per_image(fn, x0: torch.Tensor, x1: torch.Tensor):
    """(fn(x0), fn(x1)), as one batched call when the shapes agree (dict or tensor output)."""
    if x0.shape[1:] != x1.shape[1:]:
        return fn(x0), fn(x1)
    out = fn(torch.cat([x0, x1]))
    b = x0.shape[0]
    if isinstance(out, dict):
        return {k: v[:b] for k, v in out.items()}, {k: v[b:] for k, v in out.items()}
    return out[:b], out[b:]


def texture_mask(image: torch.Tensor, cells_hw: tuple[int, int], stride: int,
                 min_std: float) -> torch.Tensor:
    """[h*w] bool: cells whose image neighbourhood (3 x 3 cells) has an intensity standard
    deviation above `min_std` (intensities in [0, 1]).

    image: [1, C, H, W] in [-1, 1], unpadded. Attention and the positional encoding make
    the features of a blank region differ by position only, so without this gate two blank
    images would "match" by position.
    """
    h, w = cells_hw
    gray = image.float().mean(1, keepdim=True) * 0.5 + 0.5
    H, W = gray.shape[-2:]
    gray = F.pad(gray, (0, w * stride - W, 0, h * stride - H), mode="replicate")
    mean = F.avg_pool2d(gray, stride)
    sq = F.avg_pool2d(gray * gray, stride)
    mean = F.avg_pool2d(mean, 3, 1, 1, count_include_pad=False)
    sq = F.avg_pool2d(sq, 3, 1, 1, count_include_pad=False)
    std = (sq - mean * mean).clamp(min=0).sqrt()
    return (std > min_std).reshape(-1)
