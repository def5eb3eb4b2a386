"""Fine refinement in local windows (LoFTR-style expectation), with SAM-Net's spatial
transformer that aligns image 1's window before the correlation.

For a coarse match (cell i of image 0, cell j of image 1) with pixel centres p0, p1:
1. (align only) `WindowAligner` predicts a 2 x 2 affine A from the two coarse features;
2. image 0's window is the fine map sampled on a `window` x `window` grid g in [-1, 1]^2
   around p0, spaced one fine pixel apart (radius r = (window // 2) * FINE_STRIDE px);
   image 1's window is sampled at p1 + r A g (bilinear `grid_sample`: the spatial
   transformer's resampling, differentiable in A);
3. the coarse features are projected and added to every token, then one self and one cross
   attention block run inside the window pairs;
4. the centre token of window 0 is correlated with window 1; the softmax heatmap gives the
   expectation e and standard deviation of g; the refined point is p1 + r A e.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AttentionBlock, pixels_to_cells, sample_map
from .conf import FINE_STRIDE, FineConf

# Bounds of the predicted affine: |log scale| <= log 3, |log aspect| <= 0.5, |shear| <= 0.5.
# A window is aligned to a neighbourhood that looks alike; larger deformations belong to the
# coarse level, and unbounded outputs make the first training steps unstable.
MAX_LOG_SCALE = 1.0986
MAX_LOG_ASPECT = 0.5
MAX_SHEAR = 0.5


class WindowAligner(nn.Module):
    """The spatial transformer: a 2 x 2 affine per match from [f0_i | f1_j], initialised to
    the identity; A = R(theta) [[s a, k], [0, s / a]]."""

    def __init__(self, coarse_dim: int):
        super().__init__()
        hidden = max(coarse_dim // 2, 8)
        self.mlp = nn.Sequential(nn.Linear(2 * coarse_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 4))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        """[M, C], [M, C] -> [M, 2, 2] float32."""
        params = self.mlp(torch.cat([f0, f1], -1))
        with torch.autocast(params.device.type, enabled=False):  # geometry in float32
            theta, log_s, log_a, shear = params.float().unbind(-1)
            s = torch.exp(MAX_LOG_SCALE * torch.tanh(log_s))
            a = torch.exp(MAX_LOG_ASPECT * torch.tanh(log_a))
            k = MAX_SHEAR * torch.tanh(shear)
            cos, sin = torch.cos(theta), torch.sin(theta)
            upper = torch.stack([torch.stack([s * a, k], -1),
                                 torch.stack([torch.zeros_like(s), s / a], -1)], -2)
            rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
            return rot @ upper


class FineRefiner(nn.Module):
    """See the module docstring. `forward` works on matches of a whole batch."""

    def __init__(self, conf: FineConf, coarse_dim: int, fine_dim: int):
        super().__init__()
        self.conf = conf
        w = conf.window
        self.radius_px = (w // 2) * FINE_STRIDE
        offsets = torch.linspace(-1.0, 1.0, w)
        gy, gx = torch.meshgrid(offsets, offsets, indexing="ij")
        self.register_buffer("grid", torch.stack([gx, gy], -1).reshape(-1, 2), persistent=False)
        self.project = nn.Linear(coarse_dim, fine_dim)
        self.self_block = AttentionBlock(fine_dim, conf.num_heads)
        self.cross_block = AttentionBlock(fine_dim, conf.num_heads)
        self.aligner = WindowAligner(coarse_dim) if conf.align else None

    def _windows(self, fine: torch.Tensor, batch: torch.Tensor, points: torch.Tensor
                 ) -> torch.Tensor:
        """Fine-map values at [M, P, 2] pixel positions of batch items `batch` [M] ->
        [M, P, C]; one grid_sample per batch item present."""
        items = torch.unique(batch).tolist()
        if len(items) == 1:
            cells = pixels_to_cells(points, FINE_STRIDE)
            return sample_map(fine[items[0]:items[0] + 1], cells[None])[0]
        out = None
        for b in items:
            sel = batch == b
            cells = pixels_to_cells(points[sel], FINE_STRIDE)
            values = sample_map(fine[b:b + 1], cells[None])[0]
            if out is None:
                out = values.new_zeros(*points.shape[:2], values.shape[-1])
            out[sel] = values
        return out

    def forward(self, fine0: torch.Tensor, fine1: torch.Tensor, batch: torch.Tensor,
                points0: torch.Tensor, points1: torch.Tensor, coarse0: torch.Tensor,
                coarse1: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            fine0, fine1: [B, Cf, H/2, W/2] fine maps.
            batch: [M] batch index of each match.
            points0, points1: [M, 2] window centres in pixels (the coarse cell centres).
            coarse0, coarse1: [M, C] coarse features of the matched cells.
        Returns:
            points1 [M, 2] refined pixels of image 1 (float32); offset [M, 2] = A e, the
            refinement in window units (r px); std [M] the heatmap's standard deviation in
            window units (uncertainty); affine [M, 2, 2].
        """
        m, device = len(batch), points0.device
        grid, r = self.grid.float(), self.radius_px
        if self.aligner is not None:
            affine = self.aligner(coarse0, coarse1)
        else:
            affine = torch.eye(2, device=device).expand(m, 2, 2)
        # pixel positions in float32 (bfloat16 would round them to 2-4 px at 640 px)
        with torch.autocast(device.type, enabled=False):
            where0 = points0.float()[:, None] + r * grid
            where1 = points1.float()[:, None] + r * torch.einsum("mij,pj->mpi", affine, grid)
        win0 = self._windows(fine0, batch, where0)
        win1 = self._windows(fine1, batch, where1)
        win0 = win0 + self.project(coarse0)[:, None]
        win1 = win1 + self.project(coarse1)[:, None]
        both = self.self_block(torch.cat([win0, win1]), torch.cat([win0, win1]))
        win0, win1 = both[:m], both[m:]
        both = self.cross_block(torch.cat([win0, win1]), torch.cat([win1, win0]))
        win0, win1 = both[:m], both[m:]
        centre = win0[:, grid.shape[0] // 2]
        with torch.autocast(points0.device.type, enabled=False):
            logits = torch.einsum("mpc,mc->mp", win1.float(), centre.float())
            heat = F.softmax(logits / win1.shape[-1] ** 0.5, -1)
            mean = heat @ grid
            var = heat @ (grid * grid) - mean * mean
            std = var.clamp(min=1e-10).sum(-1).sqrt()
            offset = torch.einsum("mij,mj->mi", affine, mean)
            refined = points1.float() + r * offset
        return {"points1": refined, "offset": offset, "std": std, "affine": affine}
