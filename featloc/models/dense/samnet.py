"""SAM-Net (methods.md 3): a coarse-to-fine detector-free matcher with hierarchical
multi-scale attention, a spatial transformer before the fine match, and (in training) a
distillation term from a frozen teacher network's features.

Coarse level (1/8), after the shared backbone and a 2-D sinusoidal encoding, runs
`num_layers` x (self block, cross block). Each `HierarchicalAttention` block lets every query
cell attend at two scales and fuses the two messages (ASpanFormer's global-local attention,
the public SAM-Net code, methods 3.2):

1. global: to the whole source map average-pooled by `global_pool` (the coarsest grid). The
   attention weights also give a flow: the expected source position mu and its variance
   (computed in the same SDPA call by appending the key positions and their squares to the
   values), so no separate flow head is needed;
2. local: queries grouped in `group` x `group` cells share a `window` x `window` set of
   keys/values bilinearly sampled from the full-resolution source map (grid_sample) on a grid
   centred at the group's position (self blocks) or mean flow (cross blocks), with a spacing
   that grows with the flow's uncertainty (adaptive span).

The coarse match is a dual-softmax over the temperature-scaled similarity with mutual nearest
neighbours above a threshold (0.2, methods 3.2); matches are refined by the shared
`FineRefiner` with the window aligner (spatial transformer) on.

Deviations from ASpanFormer, for CPU cost: two attention levels instead of three, no
separate flow channels (the flow is the global attention's expectation), flow and span
detached before the local sampling (the flow loss trains them), softmax attention
everywhere (no linear attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import DenseMatchingNet, dual_softmax_matches
from .blocks import (
    DenseBackbone,
    cell_grid,
    merge_heads,
    per_image,
    sample_map,
    sinusoidal_encoding,
    split_heads,
)
from .conf import COARSE_STRIDE, DenseNetConf, SAMNetConf


def _pooled_centres(n: int, pool: int, device) -> torch.Tensor:
    """Centres (cell units) of the ceil-mode pooling regions of a 1-D grid of n cells."""
    start = torch.arange(0, n, pool, device=device, dtype=torch.float32)
    end = torch.clamp(start + pool, max=n)
    return (start + end - 1) / 2


class HierarchicalAttention(nn.Module):
    """One message block: global (pooled) + local (flow-guided window) attention, fused;
    x <- x + norm(MLP([x | norm(merge([m_global | m_local]))]))."""

    def __init__(self, dim: int, conf: SAMNetConf):
        super().__init__()
        self.conf, self.heads = conf, conf.num_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.merge = nn.Linear(2 * dim, dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim, bias=False), nn.ReLU(inplace=True),
                                 nn.Linear(dim, dim, bias=False))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        r = conf.window
        offsets = torch.arange(r, dtype=torch.float32) - (r - 1) / 2
        oy, ox = torch.meshgrid(offsets, offsets, indexing="ij")
        self.register_buffer("offsets", torch.stack([ox, oy], -1).reshape(-1, 2),
                             persistent=False)

    def _global(self, q: torch.Tensor, kv: torch.Tensor):
        """q [B, H, N, d]; kv [B, hs, ws, 2C] (projected source) -> message [B, N, C], flow
        mu [B, N, 2] (source cell units) and its variance [B, N, 2]."""
        p = self.conf.global_pool
        b, hs, ws, _ = kv.shape
        # the 1x1 projection commutes with average pooling: pool the projected map
        pooled = kv.permute(0, 3, 1, 2)
        if p > 1:
            pooled = F.avg_pool2d(pooled, p, ceil_mode=True)
        k, v = (split_heads(t, self.heads)
                for t in pooled.flatten(2).transpose(1, 2).chunk(2, -1))
        ys, xs = _pooled_centres(hs, p, kv.device), _pooled_centres(ws, p, kv.device)
        pos = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
        # positions scaled to ~[0, 1] so that E[pos^2] - E[pos]^2 keeps its precision
        scale = float(max(hs, ws))
        pos = pos / scale
        extra = torch.cat([pos, pos * pos], -1).expand(b, self.heads, -1, 4)
        d = q.shape[-1]
        # The key positions and their squares ride along as 4 extra value channels, so one
        # attention call gives the message and the flow moments. q and k are zero-padded to
        # the same width (unchanged logits, explicit scale) for the fused kernel. float32:
        # the moments need more precision than bfloat16, and this level is cheap.
        with torch.autocast(q.device.type, enabled=False):
            out = F.scaled_dot_product_attention(
                F.pad(q.float(), (0, 4)), F.pad(k.float(), (0, 4)),
                torch.cat([v.float(), extra], -1), scale=d ** -0.5)
        message = merge_heads(out[..., :d])
        moments = out[..., d:].mean(1)  # mixture over heads: [B, N, 4]
        mu = moments[..., :2]
        var = (moments[..., 2:] - mu * mu).clamp(min=0) * scale ** 2 + (p * p - 1) / 12
        return message, mu * scale, var

    def forward(self, x: torch.Tensor, src: torch.Tensor, cross: bool):
        """x [B, h, w, C] queries, src [B, hs, ws, C]; h, w multiples of `group`.

        Returns the updated x and, for cross blocks, the flow (mu [B, h*w, 2] in src cell
        units, log-variance [B, h*w]), else None.
        """
        b, h, w, c = x.shape
        g, r2 = self.conf.group, self.offsets.shape[0]
        hg, wg = h // g, w // g
        q = self.query(x)  # [B, h, w, C]
        kv = self.key_value(src)  # [B, hs, ws, 2C]
        m_global, mu, var = self._global(split_heads(q.reshape(b, h * w, c), self.heads), kv)
        # local level: one window per g x g query group, centred at the group's own position
        # (self) or mean flow (cross); flow and span are detached (trained by the flow loss)
        if cross:
            centre = mu.detach().reshape(b, hg, g, wg, g, 2).mean((2, 4))
            sigma = var.detach().mean(-1).reshape(b, hg, g, wg, g).mean((2, 4)).sqrt()
            half = (self.conf.window - 1) / 2
            span = (self.conf.radius_scale * sigma / half).clamp(1.0, self.conf.max_span)
            where = centre[..., None, :] + span[..., None, None] * self.offsets
        else:
            centre = cell_grid(hg, wg, x.device).reshape(hg, wg, 2) * g + (g - 1) / 2
            where = (centre[..., None, :] + self.offsets).expand(b, -1, -1, -1, -1)
        sampled = sample_map(kv.permute(0, 3, 1, 2), where.reshape(b, hg * wg, r2, 2))
        # 4-D [B * groups, heads, tokens, d]: the layout of the fused CPU kernel
        k, v = (split_heads(t.to(q.dtype).flatten(0, 1), self.heads)
                for t in sampled.chunk(2, -1))
        qg = q.reshape(b, hg, g, wg, g, c).transpose(2, 3).reshape(b * hg * wg, g * g, c)
        out = F.scaled_dot_product_attention(split_heads(qg, self.heads), k, v)
        m_local = merge_heads(out).reshape(b, hg, wg, g, g, c).transpose(2, 3)
        m_local = m_local.reshape(b, h * w, c)
        message = self.norm1(self.merge(torch.cat([m_global.to(m_local.dtype), m_local], -1)))
        tokens = x.reshape(b, h * w, c)
        tokens = tokens + self.norm2(self.mlp(torch.cat([tokens, message], -1)))
        flow = (mu, var.mean(-1).clamp(min=1e-6).log()) if cross else None
        return tokens.reshape(b, h, w, c), flow


class SAMNet(DenseMatchingNet):
    """SAM-Net; see the module docstring."""

    def __init__(self, conf: DenseNetConf):
        super().__init__(conf)
        self.size_multiple = COARSE_STRIDE * conf.samnet.group
        dim = conf.backbone.coarse_dim
        self.backbone = DenseBackbone(conf.backbone)
        self.layers = nn.ModuleList(
            nn.ModuleList([HierarchicalAttention(dim, conf.samnet),
                           HierarchicalAttention(dim, conf.samnet)])
            for _ in range(conf.samnet.num_layers))

    def encode_pair(self, image0: torch.Tensor, image1: torch.Tensor) -> dict:
        f0, f1 = per_image(self.backbone, image0, image1)
        maps = []
        for f in (f0, f1):
            coarse = f["coarse"].permute(0, 2, 3, 1)  # [B, h, w, C]
            h, w = coarse.shape[1:3]
            maps.append(coarse + sinusoidal_encoding(h, w, coarse.shape[-1],
                                                     coarse.device).to(coarse.dtype))
        x0, x1 = maps
        flows = []
        for self_block, cross_block in self.layers:
            if x0.shape == x1.shape:  # both images in one call (shared weights)
                x0, x1 = self_block(torch.cat([x0, x1]), torch.cat([x0, x1]),
                                    False)[0].chunk(2)
                y, flow = cross_block(torch.cat([x0, x1]), torch.cat([x1, x0]), True)
                x0, x1 = y.chunk(2)
                flows.append(tuple(t.chunk(2)[i] for t in flow for i in (0, 1)))
            else:
                x0, x1 = self_block(x0, x0, False)[0], self_block(x1, x1, False)[0]
                (y0, fl0), (y1, fl1) = cross_block(x0, x1, True), cross_block(x1, x0, True)
                x0, x1 = y0, y1
                flows.append((fl0[0], fl1[0], fl0[1], fl1[1]))
        return {"coarse0": x0.flatten(1, 2), "coarse1": x1.flatten(1, 2),
                "grid0": tuple(x0.shape[1:3]), "grid1": tuple(x1.shape[1:3]),
                "fine0": f0["fine"], "fine1": f1["fine"],
                "backbone0": f0["coarse"], "backbone1": f1["coarse"],
                # per layer: (mu0 [B, N0, 2] in image-1 cells, mu1, logvar0 [B, N0], logvar1)
                "flows": flows}

    def _similarity(self, c0: torch.Tensor, c1: torch.Tensor) -> torch.Tensor:
        with torch.autocast(c0.device.type, enabled=False):
            c0, c1 = c0.float(), c1.float()
            return (c0 @ c1.transpose(-1, -2)) * (self.log_temperature.exp() / c0.shape[-1])

    def similarity(self, out: dict) -> torch.Tensor:
        return self._similarity(out["coarse0"], out["coarse1"])

    def coarse_match(self, out, valid0, valid1, threshold, max_points):
        # the dual-softmax over valid cells only: restrict the features, not the matrix
        k0, k1 = torch.nonzero(valid0)[:, 0], torch.nonzero(valid1)[:, 0]
        sim = self._similarity(out["coarse0"][0, k0], out["coarse1"][0, k1])
        i0, i1, scores = dual_softmax_matches(sim, threshold)
        return k0[i0], k1[i1], scores
