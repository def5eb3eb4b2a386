"""CoAM (methods.md 4): co-attention conditions each image's features on the other image,
and a distinctiveness score ranks the matches.

CPU variant of methods 4.8 on the shared backbone:
- two plain stride-2 stages extend the backbone to 1/16 and 1/32 (co-attention needs a
  coarse level with a large receptive field, and 1/32 has 16x fewer tokens than 1/8);
- `CoAttention` at 1/32 and 1/16 exactly as 4.2: separate 1x1 projections of the described
  map A (queries) and the other map B (keys), single-head softmax over all positions of B
  without scaling, the *raw* features of B as values, output [A ; A_hat];
- a U-Net decoder (1x1 reduction of the 1/32 concatenation, then upsample + concatenate +
  conv-BN-ReLU at 1/16 and 1/8 with the unconditioned backbone map as the 1/8 skip) and a
  1x1 descriptor conv give raw descriptors D at 1/8, once per direction (both directions in
  one batched pass);
- the distinctiveness head r = sigmoid(BN(1x1 conv(D))) reads D detached (4.3), so its loss
  never shapes the descriptors.

Matching (4.5) on the 1/8 grid: keep the `max_points` cells of each image with the largest
r, score S_ij = r0_i r1_j cos(d0_i, d1_j), mutual nearest neighbours with S > threshold
(0.3), ranked by S; the shared fine refinement (no window alignment) then gives sub-pixel
points in image 1, which the official code does not have (its points are grid points).
Not implemented: the co-visibility head (trained but unused at test time in the official
code, 4.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..samfeat import ConvBlock
from .base import DenseMatchingNet, mutual_matches
from .blocks import DenseBackbone, per_image
from .conf import COARSE_STRIDE, CoAMConf, DenseNetConf


class CoAttention(nn.Module):
    """[A ; softmax_j(<P A_i, P' B_j>) B_j] (methods 4.2)."""

    def __init__(self, channels: int, proj_dim: int, scaled: bool):
        super().__init__()
        self.query = nn.Conv2d(channels, proj_dim, 1)
        self.key = nn.Conv2d(channels, proj_dim, 1)
        self.scale = None if scaled else 1.0

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a [B, C, h, w] (described), b [B, C, h', w'] (other) -> [B, 2C, h, w]."""
        def tokens(x):
            return x.flatten(2).transpose(1, 2)

        # float32: unscaled logits saturate the softmax in bfloat16; the maps are small
        with torch.autocast(a.device.type, enabled=False):
            q = tokens(self.query(a.float()))
            k = tokens(self.key(b.float()))
            out = F.scaled_dot_product_attention(q, k, tokens(b.float()), scale=self.scale)
        out = out.transpose(1, 2).reshape(a.shape).to(a.dtype)
        return torch.cat([a, out], 1)


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="nearest")


class CoAM(DenseMatchingNet):
    """CoAM; see the module docstring."""

    size_multiple = 4 * COARSE_STRIDE  # the 1/32 level

    def __init__(self, conf: DenseNetConf):
        super().__init__(conf)
        c: CoAMConf = conf.coam
        c8 = conf.backbone.channels[-1]
        e16, e32 = c.extra_channels
        d32, d16 = c.decoder_dims
        dim = conf.backbone.coarse_dim
        self.backbone = DenseBackbone(conf.backbone)
        self.stage16 = nn.Sequential(ConvBlock(c8, e16, 2), ConvBlock(e16, e16))
        self.stage32 = nn.Sequential(ConvBlock(e16, e32, 2), ConvBlock(e32, e32))
        self.coattention16 = CoAttention(e16, c.proj_dims[0], c.scaled_attention)
        self.coattention32 = CoAttention(e32, c.proj_dims[1], c.scaled_attention)
        self.reduce32 = nn.Sequential(nn.Conv2d(2 * e32, d32, 1, bias=False),
                                      nn.BatchNorm2d(d32), nn.ReLU(inplace=True))
        self.decode16 = ConvBlock(d32 + 2 * e16, d16)
        self.decode8 = ConvBlock(d16 + c8, dim)
        self.descriptor = nn.Conv2d(dim, dim, 1)
        self.distinctiveness = nn.Sequential(nn.Conv2d(dim, 1, 1, bias=False),
                                             nn.BatchNorm2d(1))

    def _encode(self, image):
        f = self.backbone(image)
        f["e16"] = self.stage16(f["c8"])
        f["e32"] = self.stage32(f["e16"])
        return f

    def _decode(self, a32, a16, c8):
        top = self.reduce32(a32)
        x = self.decode16(torch.cat([_up(top, a16), a16], 1))
        x = self.decode8(torch.cat([_up(x, c8), c8], 1))
        return self.descriptor(x)

    def encode_pair(self, image0: torch.Tensor, image1: torch.Tensor) -> dict:
        f0, f1 = per_image(self._encode, image0, image1)
        other = (f1, f0) if self.conf.coam.conditioned else (f0, f1)
        a32 = [self.coattention32(f["e32"], o["e32"]) for f, o in zip((f0, f1), other, strict=True)]
        a16 = [self.coattention16(f["e16"], o["e16"]) for f, o in zip((f0, f1), other, strict=True)]
        if a32[0].shape == a32[1].shape:  # both directions in one decoder pass
            d0, d1 = self._decode(torch.cat(a32), torch.cat(a16),
                                  torch.cat([f0["c8"], f1["c8"]])).chunk(2)
        else:
            d0 = self._decode(a32[0], a16[0], f0["c8"])
            d1 = self._decode(a32[1], a16[1], f1["c8"])
        r = [torch.sigmoid(self.distinctiveness(d.detach())).float() for d in (d0, d1)]
        return {"coarse0": d0.flatten(2).transpose(1, 2), "coarse1": d1.flatten(2).transpose(1, 2),
                "grid0": tuple(d0.shape[-2:]), "grid1": tuple(d1.shape[-2:]),
                "fine0": f0["fine"], "fine1": f1["fine"],
                "backbone0": f0["coarse"], "backbone1": f1["coarse"],
                "desc0": d0, "desc1": d1,  # raw descriptor maps [B, C, h, w]
                "distinct0": r[0].flatten(1), "distinct1": r[1].flatten(1)}  # [B, N] in (0, 1)

    def similarity(self, out: dict) -> torch.Tensor:
        """Cosine similarity times the learnable temperature (dual-softmax logits)."""
        with torch.autocast(out["coarse0"].device.type, enabled=False):
            d0 = F.normalize(out["coarse0"].float(), dim=-1)
            d1 = F.normalize(out["coarse1"].float(), dim=-1)
            return (d0 @ d1.transpose(1, 2)) * self.log_temperature.exp()

    def coarse_match(self, out, valid0, valid1, threshold, max_points):
        keep = []
        for i, valid in enumerate((valid0, valid1)):
            r = out[f"distinct{i}"][0]
            index = torch.nonzero(valid)[:, 0]
            if max_points > 0 and len(index) > max_points:
                top = torch.topk(r[index], max_points, sorted=False).indices
                index = torch.sort(index[top]).values
            keep.append(index)
        k0, k1 = keep
        d0 = F.normalize(out["coarse0"][0, k0].float(), dim=-1, eps=1e-4)
        d1 = F.normalize(out["coarse1"][0, k1].float(), dim=-1, eps=1e-4)
        r0, r1 = out["distinct0"][0, k0], out["distinct1"][0, k1]
        scores = r0[:, None] * r1[None] * (d0 @ d1.T)
        i0, i1, s = mutual_matches(scores, threshold)
        return k0[i0], k1[i1], s
