"""Attentional sparse matcher: the LightGlue architecture with SuperGlue options (methods.md 2).

`AttentionMatcherNet` matches two sets of keypoints with descriptors:

1. keypoint normalisation (2.2): LightGlue `(p - size/2) / (max(size)/2)` with the rotary
   encoding, SuperGlue `(p - size/2) / (0.7 max(size))` with the MLP encoding;
2. positional encoding (2.3), `conf.pos_encoding`: "rotary" (learnable Fourier features rotating
   q and k of self-attention, so attention depends on relative position) or "mlp" (SuperGlue's
   additive MLP of position and detection score). With `add_scale_ori` the log-scale and the
   orientation of SIFT-like keypoints are appended to the position;
3. `num_layers` layers of a self-attention block then a cross-attention block (2.4), shared by
   both images, attention through `torch.nn.functional.scaled_dot_product_attention`; every
   block ends with `x <- x + FFN([x | message])`;
4. an assignment head per layer (2.5), `conf.assignment`: "dual_softmax" (LightGlue:
   log_softmax over rows + over columns + log matchability, dustbins log(1 - matchability)) or
   "sinkhorn" (SuperGlue: log-domain optimal transport with a learnable dustbin score);
5. match extraction (2.6): mutual argmax over the non-dustbin block, probability > threshold.

Two entry points:
- `forward(data)` (training, batched, padded with masks): every layer's log-assignment
  `[L, B, M+1, N+1]` (deep supervision) and the confidence logits `[L-1, B, M|N]`;
- `match(data, ...)` (inference, batch 1): adaptive depth (stop once enough points are
  confident, 2.7) and point pruning (drop confidently unmatchable points), then the stopping
  layer's assignment; returns matches and scores over the original keypoints.

Weights files (`save_attention_net` / `load_attention_net`): `{"net_conf": dict,
"state_dict": ..., "meta": dict}`, written by the training task's export
(`featloc train --config configs/train/attention-sift.yaml`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

POS_ENCODINGS = ("rotary", "mlp")
ASSIGNMENTS = ("dual_softmax", "sinkhorn")

# Adaptive depth (methods 2.7). After layer l (0-based) of L, a point counts as confident when
# its confidence c_i (the predicted probability that its current best match, dustbin
# included, equals the final layer's) exceeds
#     lambda_l = CONFIDENCE_FLOOR + CONFIDENCE_BOOST * exp(-CONFIDENCE_DECAY * l / L).
# The threshold starts near 0.9 and decays towards 0.8: after few layers little context has been
# exchanged, the classifier is least reliable and a wrong early exit costs the most layers of
# refinement, so early exits need stronger evidence; in deep layers the remaining layers rarely
# change a confident prediction. These are LightGlue's published values (lightglue.py).
CONFIDENCE_FLOOR = 0.8
CONFIDENCE_BOOST = 0.1
CONFIDENCE_DECAY = 4.0
# A large finite negative log-value for masked entries: -inf would give NaN in
# (-inf) - (-inf) inside log-softmax / Sinkhorn for fully padded rows.
_NEG = -1e9


@dataclass(frozen=True)
class AttentionNetConf:
    input_dim: int = 128  # descriptor dimension of the features (projected to `dim` if different)
    dim: int = 256  # width D of the attention layers
    num_heads: int = 4  # attention heads; head dim = dim / num_heads (even, for rotary)
    num_layers: int = 9  # L; one layer = a self-attention block then a cross-attention block
    # "rotary" (LightGlue: learnable Fourier features rotating q/k of self-attention) or
    # "mlp" (SuperGlue: additive MLP of the normalised position and the detection score)
    pos_encoding: str = "rotary"
    add_scale_ori: bool = False  # append log-scale and orientation to the position (SIFT)
    # L2-normalise the input descriptors (SAMFeat: weighted f = w d and unit d give the same
    # input, methods 2.11); SIFT/RootSIFT descriptors are unit already
    normalize_descriptors: bool = False
    mlp_hidden: list[int] = field(default_factory=lambda: [32, 64, 128])  # "mlp" widths
    # "dual_softmax" (LightGlue, with matchability) or "sinkhorn" (SuperGlue optimal
    # transport with a learnable dustbin score)
    assignment: str = "dual_softmax"
    sinkhorn_iterations: int = 50  # log-domain Sinkhorn iterations (paper 100, hloc 50)

    def __post_init__(self):
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got "
                             f"{self.pos_encoding!r}")
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"dim={self.dim} must split into {self.num_heads} heads of an even "
                             "size")
        if self.num_layers < 1 or self.input_dim < 1 or self.sinkhorn_iterations < 1:
            raise ValueError("num_layers, input_dim and sinkhorn_iterations must be >= 1")

    @property
    def position_dim(self) -> int:
        """Inputs of the positional encoding: x, y (+ score for mlp) (+ log-scale, orientation)."""
        return 2 + (self.pos_encoding == "mlp") + 2 * self.add_scale_ori


def confidence_threshold(layer: int, num_layers: int) -> float:
    """lambda_l of the adaptive-depth schedule (see CONFIDENCE_FLOOR)."""
    value = CONFIDENCE_FLOOR + CONFIDENCE_BOOST * math.exp(-CONFIDENCE_DECAY * layer / num_layers)
    return min(max(value, 0.0), 1.0)


# ------------------------------------------------------------------------------------------
# Inputs


def normalize_keypoints(kpts: torch.Tensor, size: torch.Tensor | None, style: str
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, 2] pixels -> normalised coordinates, and the [B] scale used (px per unit).

    style "lightglue": (p - size/2) / (max(size)/2) (about [-1, 1]); "superglue":
    (p - size/2) / (0.7 max(size)). Without `size` [B, 2] (w, h), the keypoints' bounding
    box plus 1 stands in for it (LightGlue).
    """
    if size is None:
        size = 1 + kpts.amax(-2) - kpts.amin(-2) if kpts.shape[-2] else kpts.new_ones(
            kpts.shape[0], 2)
    size = size.to(kpts).reshape(-1, 2)
    factor = 0.5 if style == "lightglue" else 0.7
    scale = size.amax(-1) * factor
    return (kpts - size[:, None] / 2) / scale[:, None, None], scale


def _position_input(data: dict, i: int, conf: AttentionNetConf) -> torch.Tensor:
    kpts = data[f"keypoints{i}"].float()
    style = "lightglue" if conf.pos_encoding == "rotary" else "superglue"
    pos, scale = normalize_keypoints(kpts, data.get(f"image_size{i}"), style)
    parts = [pos]
    if conf.pos_encoding == "mlp":
        scores = data.get(f"keypoint_scores{i}")
        parts.append((scores.float() if scores is not None else kpts.new_ones(kpts.shape[:2]))
                     [..., None])
    if conf.add_scale_ori:
        if data.get(f"scales{i}") is None or data.get(f"oris{i}") is None:
            raise ValueError("this matcher uses keypoint scales and orientations "
                             "(add_scale_ori, SIFT-like features) but the features have none")
        scales = data[f"scales{i}"].float().clamp(min=1e-3) / scale[:, None]
        oris = torch.remainder(data[f"oris{i}"].float() + math.pi, 2 * math.pi) - math.pi
        parts += [torch.log(scales)[..., None], oris[..., None]]
    return torch.cat(parts, -1)


class RotaryEncoding(nn.Module):
    """Learnable Fourier features used as rotary angles (LightGlue): theta = W_r p,
    cos/sin each repeated twice to cover the head dimension."""

    def __init__(self, in_dim: int, head_dim: int, gamma: float = 1.0):
        super().__init__()
        self.Wr = nn.Linear(in_dim, head_dim // 2, bias=False)
        nn.init.normal_(self.Wr.weight, mean=0.0, std=gamma ** -2)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        """[B, N, M] -> [2, B, 1, N, head_dim] (cos, sin), broadcast over heads."""
        angles = self.Wr(pos)
        emb = torch.stack([angles.cos(), angles.sin()], 0).unsqueeze(2)
        return emb.repeat_interleave(2, dim=-1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(z1, z2) -> (-z2, z1) on consecutive pairs of the last dimension."""
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), -1).flatten(-2)


def apply_rotary(enc: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t * enc[0] + rotate_half(t) * enc[1]


class MLPEncoding(nn.Module):
    """SuperGlue's additive keypoint encoder, Linear -> LayerNorm -> ReLU per hidden layer.
    LayerNorm replaces SuperGlue's BatchNorm: it is per point, so padded points and the batch
    size at inference (1) cannot change the statistics."""

    def __init__(self, in_dim: int, hidden: list[int], dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.ReLU()]
            in_dim = width
        layers.append(nn.Linear(in_dim, dim))
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        return self.net(pos)


# ------------------------------------------------------------------------------------------
# Attention layers


class FFN(nn.Sequential):
    """[x | message] (2D) -> 2D -> LayerNorm -> GELU -> D."""

    def __init__(self, dim: int):
        super().__init__(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                         nn.Linear(2 * dim, dim))


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """[B, N] bool (True: real point) -> SDPA mask [B, 1, 1, N]. A set without any real point
    attends to all of them, so its (ignored) outputs stay finite instead of NaN."""
    if mask is None:
        return None
    mask = mask | ~mask.any(-1, keepdim=True)
    return mask[:, None, None, :]


class SelfBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = FFN(dim)

    def forward(self, x: torch.Tensor, enc: torch.Tensor | None,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if enc is not None:
            q, k = apply_rotary(enc, q), apply_rotary(enc, k)
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        message = self.out(context.transpose(1, 2).reshape(B, N, D))
        return x + self.ffn(torch.cat([x, message], -1))


class CrossBlock(nn.Module):
    """LightGlue's bidirectional cross-attention: one projection serves as query and key
    (S = qk_0 qk_1^T / sqrt(d_h)), so m_0 = softmax_rows(S) v_1 and m_1 = softmax_rows(S^T) v_0."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qk = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = FFN(dim)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x0, x1, key_mask0, key_mask1):
        qk0, qk1 = self._split(self.qk(x0)), self._split(self.qk(x1))
        v0, v1 = self._split(self.v(x0)), self._split(self.v(x1))
        m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=key_mask1)
        m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=key_mask0)
        m0 = self.out(m0.transpose(1, 2).flatten(-2))
        m1 = self.out(m1.transpose(1, 2).flatten(-2))
        return x0 + self.ffn(torch.cat([x0, m0], -1)), x1 + self.ffn(torch.cat([x1, m1], -1))


class AttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.self_attn = SelfBlock(dim, heads)
        self.cross_attn = CrossBlock(dim, heads)

    def forward(self, x0, x1, enc0, enc1, key_mask0=None, key_mask1=None):
        x0 = self.self_attn(x0, enc0, key_mask0)
        x1 = self.self_attn(x1, enc1, key_mask1)
        return self.cross_attn(x0, x1, key_mask0, key_mask1)


# ------------------------------------------------------------------------------------------
# Assignment


def _pair_mask(mask0, mask1):
    if mask0 is None and mask1 is None:
        return None
    return mask0[:, :, None] & mask1[:, None, :]


def dual_softmax_assignment(sim: torch.Tensor, z0: torch.Tensor, z1: torch.Tensor,
                            mask0: torch.Tensor | None = None,
                            mask1: torch.Tensor | None = None) -> torch.Tensor:
    """LightGlue's log-assignment [B, M+1, N+1] (methods 2.5) from similarities [B, M, N] and
    matchability logits z0 [B, M], z1 [B, N]: log_softmax_j + log_softmax_i + log sigma_i +
    log sigma_j, dustbins log(1 - sigma). Masked (padded) points take no probability."""
    B, M, N = sim.shape
    pair = _pair_mask(mask0, mask1)
    if pair is not None:
        sim = sim.masked_fill(~pair, _NEG)
    certainties = F.logsigmoid(z0)[:, :, None] + F.logsigmoid(z1)[:, None, :]
    scores0 = F.log_softmax(sim, 2)
    scores1 = F.log_softmax(sim, 1)
    out = sim.new_full((B, M + 1, N + 1), 0.0)
    out[:, :M, :N] = scores0 + scores1 + certainties
    out[:, :M, N] = F.logsigmoid(-z0)
    out[:, M, :N] = F.logsigmoid(-z1)
    if pair is not None:
        out[:, :M, :N] = out[:, :M, :N].masked_fill(~pair, _NEG)
        out[:, :M, N] = out[:, :M, N].masked_fill(~mask0, _NEG)
        out[:, M, :N] = out[:, M, :N].masked_fill(~mask1, _NEG)
    return out


def log_optimal_transport(scores: torch.Tensor, bin_score: torch.Tensor, iterations: int,
                          mask0: torch.Tensor | None = None,
                          mask1: torch.Tensor | None = None) -> torch.Tensor:
    """SuperGlue's log-domain Sinkhorn with a dustbin (methods 2.5) -> log P [B, M+1, N+1].

    Marginals a = [1 x m, n], b = [1 x n, m] over the m, n real points of each pair (padded
    points get marginal 0), normalised by m + n; the result is rescaled by m + n so that each
    real row and column sums to ~1 and the dustbins to ~n and ~m.
    """
    B, M, N = scores.shape
    if mask0 is None:
        mask0 = scores.new_ones(B, M, dtype=torch.bool)
    if mask1 is None:
        mask1 = scores.new_ones(B, N, dtype=torch.bool)
    m = mask0.sum(-1).to(scores.dtype)
    n = mask1.sum(-1).to(scores.dtype)
    couplings = torch.cat([
        torch.cat([scores, bin_score.expand(B, M, 1)], -1),
        torch.cat([bin_score.expand(B, 1, N), bin_score.expand(B, 1, 1)], -1)], 1)
    norm = -torch.log((m + n).clamp(min=1))  # [B]

    def log_or_neg(x):
        return torch.where(x > 0, torch.log(x.clamp(min=1e-12)), torch.full_like(x, _NEG))

    log_mu = torch.cat([torch.where(mask0, norm[:, None], _NEG),
                        (log_or_neg(n) + norm)[:, None]], 1)  # [B, M+1]
    log_nu = torch.cat([torch.where(mask1, norm[:, None], _NEG),
                        (log_or_neg(m) + norm)[:, None]], 1)  # [B, N+1]
    u, v = torch.zeros_like(log_mu), torch.zeros_like(log_nu)
    for _ in range(iterations):
        u = log_mu - torch.logsumexp(couplings + v[:, None, :], dim=2)
        v = log_nu - torch.logsumexp(couplings + u[:, :, None], dim=1)
    out = couplings + u[:, :, None] + v[:, None, :] - norm[:, None, None]
    return out.clamp(min=_NEG)


class DualSoftmaxHead(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.matchability = nn.Linear(dim, 1)

    def forward(self, x0, x1, mask0=None, mask1=None) -> torch.Tensor:
        d = x0.shape[-1]
        f0, f1 = self.proj(x0) / d ** 0.25, self.proj(x1) / d ** 0.25
        sim = f0 @ f1.transpose(1, 2)
        return dual_softmax_assignment(sim, self.matchability(x0)[..., 0],
                                       self.matchability(x1)[..., 0], mask0, mask1)

    def matchability_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.matchability(x)[..., 0])


class SinkhornHead(nn.Module):
    def __init__(self, dim: int, iterations: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.bin_score = nn.Parameter(torch.tensor(1.0))
        self.iterations = iterations

    def forward(self, x0, x1, mask0=None, mask1=None, iterations: int | None = None):
        d = x0.shape[-1]
        sim = self.proj(x0) @ self.proj(x1).transpose(1, 2) / d ** 0.5
        return log_optimal_transport(sim, self.bin_score, iterations or self.iterations,
                                     mask0, mask1)


def filter_matches(log_assignment: torch.Tensor, threshold: float):
    """Mutual argmax over the non-dustbin block with probability > threshold (methods 2.6).

    Args:
        log_assignment: [B, M+1, N+1].
    Returns:
        matches0 [B, M], matches1 [B, N] (int64, -1: unmatched) and scores0 [B, M],
        scores1 [B, N] in [0, 1] (0 where unmatched).
    """
    scores = log_assignment[:, :-1, :-1]
    B, M, N = scores.shape
    if M == 0 or N == 0:
        return (scores.new_full((B, M), -1, dtype=torch.long),
                scores.new_full((B, N), -1, dtype=torch.long),
                scores.new_zeros(B, M), scores.new_zeros(B, N))
    max0, max1 = scores.max(2), scores.max(1)
    m0, m1 = max0.indices, max1.indices
    mutual0 = torch.arange(M, device=m0.device)[None] == m1.gather(1, m0)
    mutual1 = torch.arange(N, device=m1.device)[None] == m0.gather(1, m1)
    zero = scores.new_zeros(())
    mscores0 = torch.where(mutual0, max0.values.exp().clamp(0, 1), zero)
    mscores1 = torch.where(mutual1, mscores0.gather(1, m1), zero)
    valid0 = mutual0 & (mscores0 > threshold)
    valid1 = mutual1 & valid0.gather(1, m1)
    m0 = torch.where(valid0, m0, -1)
    m1 = torch.where(valid1, m1, -1)
    return m0, m1, torch.where(valid0, mscores0, zero), torch.where(valid1, mscores1, zero)


# ------------------------------------------------------------------------------------------
# The network


class AttentionMatcherNet(nn.Module):
    """LightGlue-style attentional matcher with SuperGlue options; see the module docstring."""

    def __init__(self, conf: AttentionNetConf | None = None):
        super().__init__()
        self.conf = conf = conf if conf is not None else AttentionNetConf()
        D, H, L = conf.dim, conf.num_heads, conf.num_layers
        self.input_proj = nn.Linear(conf.input_dim, D) if conf.input_dim != D else nn.Identity()
        if conf.pos_encoding == "rotary":
            self.posenc = RotaryEncoding(conf.position_dim, D // H)
        else:
            self.posenc = MLPEncoding(conf.position_dim, list(conf.mlp_hidden), D)
        self.layers = nn.ModuleList([AttentionLayer(D, H) for _ in range(L)])
        if conf.assignment == "dual_softmax":
            self.heads = nn.ModuleList([DualSoftmaxHead(D) for _ in range(L)])
        else:
            self.heads = nn.ModuleList([SinkhornHead(D, conf.sinkhorn_iterations)
                                        for _ in range(L)])
        # per-point confidence classifiers after layers 0..L-2 (adaptive depth)
        self.confidence = nn.ModuleList([nn.Linear(D, 1) for _ in range(L - 1)])

    # -- shared ------------------------------------------------------------------------------
    def _encode(self, data: dict, i: int):
        """Initial states [B, N, D] and rotary encoding (None for mlp) of image i."""
        pos = _position_input(data, i, self.conf)
        desc = data[f"descriptors{i}"].detach().float()
        if self.conf.normalize_descriptors:
            desc = F.normalize(desc, dim=-1)
        x = self.input_proj(desc.to(self.input_dtype))
        # the encoding in float32 even under autocast: bf16 rotary angles would be off by
        # ~1e-2 rad, a relative-position error that grows with the angle
        with torch.autocast(x.device.type, enabled=False):
            enc = self.posenc(pos.to(self.input_dtype))
        if self.conf.pos_encoding == "rotary":
            return x, enc
        return x + enc, None

    @property
    def input_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _assign(self, layer: int, x0, x1, mask0=None, mask1=None, iterations=None):
        """Float32 log-assignment of layer `layer` (autocast off: log-softmax and Sinkhorn
        in bf16 lose the small probabilities the loss needs)."""
        with torch.autocast(x0.device.type, enabled=False):
            head = self.heads[layer]
            x0, x1 = x0.float(), x1.float()
            if isinstance(head, SinkhornHead):
                return head(x0, x1, mask0, mask1, iterations)
            return head(x0, x1, mask0, mask1)

    # -- training ----------------------------------------------------------------------------
    def forward(self, data: dict) -> dict:
        """Batched forward for training (no early exit, no pruning).

        Args:
            data: keypoints0/1 [B, M|N, 2] pixels, descriptors0/1 [B, M|N, D_in],
                image_size0/1 [B, 2] (w, h), optional mask0/1 [B, M|N] bool (False: padding),
                keypoint_scores0/1 [B, M|N] (mlp encoding), scales0/1 and oris0/1 [B, M|N]
                (add_scale_ori).
        Returns:
            log_assignment [L, B, M+1, N+1] float32: each layer's head on that layer's states;
            confidence0 [L-1, B, M], confidence1 [L-1, B, N]: confidence logits (inputs
            detached, so their loss trains only the classifiers).
        """
        mask0, mask1 = data.get("mask0"), data.get("mask1")
        x0, enc0 = self._encode(data, 0)
        x1, enc1 = self._encode(data, 1)
        km0, km1 = _key_mask(mask0), _key_mask(mask1)
        las, conf0, conf1 = [], [], []
        L = self.conf.num_layers
        for i, layer in enumerate(self.layers):
            x0, x1 = layer(x0, x1, enc0, enc1, km0, km1)
            las.append(self._assign(i, x0, x1, mask0, mask1))
            if i < L - 1:
                conf0.append(self.confidence[i](x0.detach())[..., 0].float())
                conf1.append(self.confidence[i](x1.detach())[..., 0].float())
        B, M, N = x0.shape[0], x0.shape[1], x1.shape[1]
        empty = x0.new_zeros(0, B, M).float(), x1.new_zeros(0, B, N).float()
        return {
            "log_assignment": torch.stack(las),
            "confidence0": torch.stack(conf0) if conf0 else empty[0],
            "confidence1": torch.stack(conf1) if conf1 else empty[1],
        }

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def match(self, data: dict, filter_threshold: float = 0.1, depth_confidence: float = 0.95,
              width_confidence: float = 0.99, prune_min_keypoints: int = 1024,
              sinkhorn_iterations: int | None = None) -> dict:
        """Match one pair (batch 1) with adaptive depth and width.

        Args:
            data: as `forward`, B = 1, no masks.
            filter_threshold: keep mutual matches with probability > this (LG 0.1, SG 0.2).
            depth_confidence: stop after layer l when more than this share of the points
                (both images; pruned points count as confident) have confidence > lambda_l;
                -1 disables early stopping. Never stops after the last layer.
            width_confidence: prune point i after layer l when its matchability
                sigma_i <= 1 - width_confidence and its confidence > lambda_l (confident
                non-matches); -1 disables. dual_softmax only.
            prune_min_keypoints: prune only while an image has more points than this.
            sinkhorn_iterations: override the model's (sinkhorn only).
        Returns:
            matches0 [M], matches1 [N] int64 (-1 unmatched); matching_scores0 [M],
            matching_scores1 [N] float32; stop: number of layers run; prune0 [M], prune1 [N]:
            number of layers each point went through (< stop: pruned, hence unmatched).
        """
        if data["keypoints0"].shape[0] != 1:
            raise ValueError("match() takes one pair (batch size 1); use forward() for batches")
        m, n = data["keypoints0"].shape[1], data["keypoints1"].shape[1]
        L = self.conf.num_layers
        device = data["keypoints0"].device
        if m == 0 or n == 0:
            return {"matches0": torch.full((m,), -1, dtype=torch.long, device=device),
                    "matches1": torch.full((n,), -1, dtype=torch.long, device=device),
                    "matching_scores0": torch.zeros(m, device=device),
                    "matching_scores1": torch.zeros(n, device=device),
                    "stop": 0, "prune0": torch.zeros(m, dtype=torch.long, device=device),
                    "prune1": torch.zeros(n, dtype=torch.long, device=device)}
        x0, enc0 = self._encode(data, 0)
        x1, enc1 = self._encode(data, 1)
        ind0 = torch.arange(m, device=device)
        ind1 = torch.arange(n, device=device)
        prune0 = torch.zeros(m, dtype=torch.long, device=device)
        prune1 = torch.zeros(n, dtype=torch.long, device=device)
        can_prune = width_confidence > 0 and self.conf.assignment == "dual_softmax"
        early_stop = depth_confidence > 0
        layer = 0
        for layer in range(L):
            x0, x1 = self.layers[layer](x0, x1, enc0, enc1)
            prune0[ind0] += 1
            prune1[ind1] += 1
            if layer == L - 1:
                break
            if not (early_stop or can_prune):
                continue
            c0 = torch.sigmoid(self.confidence[layer](x0)[0, :, 0].float())
            c1 = torch.sigmoid(self.confidence[layer](x1)[0, :, 0].float())
            threshold = confidence_threshold(layer, L)
            if early_stop:
                unconfident = (c0 <= threshold).sum() + (c1 <= threshold).sum()
                if 1.0 - unconfident.item() / (m + n) > depth_confidence:
                    break
            if can_prune:
                head = self.heads[layer]
                if x0.shape[1] > prune_min_keypoints:
                    keep = (head.matchability_prob(x0.float())[0] > 1 - width_confidence) | (
                        c0 <= threshold)
                    keep = torch.nonzero(keep)[:, 0]
                    ind0, x0 = ind0[keep], x0[:, keep]
                    if enc0 is not None:
                        enc0 = enc0[:, :, :, keep]
                if x1.shape[1] > prune_min_keypoints:
                    keep = (head.matchability_prob(x1.float())[0] > 1 - width_confidence) | (
                        c1 <= threshold)
                    keep = torch.nonzero(keep)[:, 0]
                    ind1, x1 = ind1[keep], x1[:, keep]
                    if enc1 is not None:
                        enc1 = enc1[:, :, :, keep]
                if x0.shape[1] == 0 or x1.shape[1] == 0:
                    break  # nothing left to match: attention over an empty set is undefined
        la = self._assign(layer, x0, x1, iterations=sinkhorn_iterations)
        k0, k1, s0, s1 = filter_matches(la, filter_threshold)
        matches0 = torch.full((m,), -1, dtype=torch.long, device=device)
        matches1 = torch.full((n,), -1, dtype=torch.long, device=device)
        scores0 = torch.zeros(m, device=device)
        scores1 = torch.zeros(n, device=device)
        matches0[ind0] = torch.where(k0[0] >= 0, ind1[k0[0].clamp(min=0)], -1)
        matches1[ind1] = torch.where(k1[0] >= 0, ind0[k1[0].clamp(min=0)], -1)
        scores0[ind0] = s0[0]
        scores1[ind1] = s1[0]
        return {"matches0": matches0, "matches1": matches1, "matching_scores0": scores0,
                "matching_scores1": scores1, "stop": layer + 1, "prune0": prune0,
                "prune1": prune1}


# ------------------------------------------------------------------------------------------
# Weights files


def save_attention_net(net: AttentionMatcherNet, path: str | Path, dtype: torch.dtype = torch.float32,
                       **meta) -> Path:
    """Write `{"net_conf", "state_dict", "meta"}` atomically (floats cast to `dtype`)."""
    from .weights import save_net

    return save_net(net, path, dtype, **meta)


def net_from_state(net_conf: dict, state_dict: dict) -> AttentionMatcherNet:
    from ..config import make_conf
    from .weights import load_float_state

    return load_float_state(AttentionMatcherNet(make_conf(AttentionNetConf, net_conf)), state_dict)


def load_attention_net(path: str | Path) -> AttentionMatcherNet:
    """A network from an exported weights file or from a training checkpoint
    (`ckpt_<step>.pt` of the `attention` task), in float32 and eval mode. `net.trained_features`
    is the extractor name it was trained on (None when the file does not say)."""
    from .weights import load_blob

    path = Path(path)
    obj = load_blob(path)
    if "net_conf" in obj and "state_dict" in obj:
        net = net_from_state(obj["net_conf"], obj["state_dict"])
        net.trained_features = obj.get("meta", {}).get("features")
        return net
    if "model" in obj and obj.get("task") == "attention":
        net = net_from_state(obj["config"]["model"], obj["model"])
        net.trained_features = obj["config"].get("data", {}).get("features")
        return net
    raise ValueError(f"{path} is neither attention-matcher weights (net_conf, state_dict) nor a "
                     "checkpoint of the `attention` training task")
