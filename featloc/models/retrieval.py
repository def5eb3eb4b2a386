"""Learned global descriptors: a small trainable pooling head on the dense maps of a frozen
SAMFeat network (the project's own local-feature network; methods.md 6.3 step 1).

    image [B, 3, H, W] in [-1, 1] (H, W multiples of 16)
      -> SAMFeat (frozen; optionally its last layer trained): `feature_map`, desc_map
         (D = 128 at 1/4, the local descriptors) or distill (256 at 1/8, the SAM-like embedding)
      -> per-location L2 normalisation
      -> pooling: NetVLAD (Arandjelovic et al. 2016: soft assignment to K learned clusters,
         residual sums, intra-normalisation, L2) or GeM (Radenovic et al. 2018: a 1x1 conv +
         ReLU, then the generalised mean with a learned exponent p, L2)
      -> optional linear projection to `output_dim` (with bias; trained end to end, it plays
         the role of PCA-whitening, as the learned whitening of Radenovic et al.) and L2.

`forward` returns {"global_descriptor": [B, output_dim] float32, unit norm}. Pooling runs in
float32 even under autocast: the sums run over thousands of locations.

NetVLAD clusters start from data: `init_clusters` runs k-means on the unit descriptors of a
batch and sets the soft-assignment conv to the equivalent of softmax(-alpha |x - c_k|^2)
(the paper's initialisation); `clusters_initialized` (a buffer, saved with the weights)
tells the training task whether it still has to do that. The projection starts as a random
orthogonal map (a scaled random rotation keeps inner products on average), so an untrained
head already gives a usable soft-VLAD descriptor.

Weights files (`save_retrieval_net` / `load_retrieval_net`): `{"net_conf", "backbone_conf",
"state_dict", "meta"}`, the SAMFeat network included, so a file is self-contained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .samfeat import (
    SAMFeatNetConf,
    build_samfeat_net,
    lite_conf_from_state,
    load_samfeat_net,
)

POOLINGS = ("netvlad", "gem")
FEATURE_MAPS = {"desc_map": "descriptor_head", "distill": "distill_head"}  # map -> its last layer
# The soft assignment of a descriptor to its nearest cluster is this many times its assignment
# to the second nearest, on average, at initialisation (NetVLAD paper: peaky but not hard).
INIT_ASSIGNMENT_RATIO = 100.0


@dataclass(frozen=True)
class RetrievalNetConf:
    arch: str = "lite"  # SAMFeat architecture of the backbone: lite | vgg
    # SAMFeat map pooled: desc_map (128 channels at 1/4) | distill (256 at 1/8)
    feature_map: str = "desc_map"
    pooling: str = "netvlad"  # netvlad | gem
    num_clusters: int = 32  # netvlad: K (pooled vector: K x D)
    gem_dim: int = 512  # gem: channels of the 1x1 conv + ReLU before pooling
    gem_p: float = 3.0  # gem: initial exponent (learned; 1 = average, large = max pooling)
    output_dim: int = 512  # linear projection of the pooled vector; 0: none (K x D or gem_dim)
    finetune_last: bool = False  # also train the SAMFeat layer that outputs `feature_map`

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"feature_map must be one of {tuple(FEATURE_MAPS)}, got "
                             f"{self.feature_map!r}")
        if self.num_clusters < 1 or self.gem_dim < 1 or self.output_dim < 0:
            raise ValueError("num_clusters and gem_dim must be >= 1, output_dim >= 0")


def float32(like: torch.Tensor):
    """A block computed in float32 even under autocast (which would run matmuls in bf16)."""
    return torch.autocast(like.device.type, enabled=False)


class NetVLAD(nn.Module):
    """NetVLAD pooling of unit descriptors [B, D, h, w] -> [B, K * D] (unit norm)."""

    def __init__(self, dim: int, num_clusters: int):
        super().__init__()
        self.assign = nn.Conv2d(dim, num_clusters, 1)
        self.centroids = nn.Parameter(F.normalize(torch.randn(num_clusters, dim), dim=1))
        self.register_buffer("clusters_initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.assign(x)
        with float32(x):
            a = torch.softmax(logits.float(), dim=1).flatten(2)  # [B, K, N]
            x = x.float().flatten(2)  # [B, D, N]
            # sum_i a_ik (x_i - c_k) = (A X^T)_k - (sum_i a_ik) c_k
            vlad = a @ x.transpose(1, 2) - a.sum(-1, keepdim=True) * self.centroids.float()
            vlad = F.normalize(vlad, dim=2, eps=1e-12)  # intra-normalisation
            return F.normalize(vlad.flatten(1), dim=1, eps=1e-12)

    @torch.no_grad()
    def init_clusters(self, descriptors: torch.Tensor, seed: int = 0, iterations: int = 20) -> None:
        """k-means (spherical, on unit descriptors [N, D]) and the matching assignment conv."""
        # float32 even inside the trainer's autocast: alpha comes from distance differences
        with float32(descriptors):
            self._init_clusters(F.normalize(descriptors.float(), dim=1), seed, iterations)

    def _init_clusters(self, x: torch.Tensor, seed: int, iterations: int) -> None:
        k = self.centroids.shape[0]
        if len(x) < k:
            raise ValueError(f"NetVLAD init: {len(x)} descriptors for {k} clusters")
        gen = torch.Generator().manual_seed(seed)
        # k-means++ seeding (each next centre drawn with probability ~ squared distance):
        # random seeding often merges two true clusters and splits another
        c = x[torch.randint(len(x), (1,), generator=gen)]
        d2 = (2 - 2 * (x @ c.T)).clamp(min=0)[:, 0]
        for _ in range(k - 1):
            pick = torch.multinomial(d2 + 1e-12, 1, generator=gen)
            c = torch.cat([c, x[pick]])
            d2 = torch.minimum(d2, (2 - 2 * (x @ x[pick].T)).clamp(min=0)[:, 0])
        for _ in range(iterations):
            nearest = (x @ c.T).argmax(1)
            sums = torch.zeros_like(c).index_add_(0, nearest, x)
            counts = torch.bincount(nearest, minlength=k)
            empty = counts == 0  # re-seed an empty cluster with a random descriptor
            sums[empty] = x[torch.randint(len(x), (int(empty.sum()),), generator=gen)]
            c = F.normalize(sums, dim=1)
        d2 = 2 - 2 * (x @ c.T)  # squared distances of unit vectors
        two = d2.topk(2, dim=1, largest=False).values
        alpha = math.log(INIT_ASSIGNMENT_RATIO) / max(float((two[:, 1] - two[:, 0]).mean()), 1e-6)
        self.centroids.copy_(c)
        # softmax_k(-alpha |x - c_k|^2) = softmax_k(2 alpha c_k.x - alpha |c_k|^2)
        self.assign.weight.copy_((2 * alpha * c)[:, :, None, None])
        self.assign.bias.copy_(-alpha * (c * c).sum(1))
        self.clusters_initialized.fill_(True)


class GeM(nn.Module):
    """Generalised-mean pooling of relu(conv1x1(x)) [B, D, h, w] -> [B, C] (unit norm)."""

    def __init__(self, dim: int, channels: int, p: float):
        super().__init__()
        self.reduce = nn.Conv2d(dim, channels, 1)
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.reduce(x))
        with float32(x):
            p = self.p.float().clamp(min=1.0)
            pooled = x.float().clamp(min=1e-6).pow(p).mean((2, 3)).pow(1.0 / p)
            return F.normalize(pooled, dim=1, eps=1e-12)


class RetrievalNet(nn.Module):
    """SAMFeat dense map -> pooling -> projection (module docstring).

    Args:
        conf: `RetrievalNetConf`.
        backbone: a SAMFeat network (e.g. loaded from weights); None: a fresh one of
            `conf.arch` (its weights then come from a retrieval weights file).
    """

    def __init__(self, conf: RetrievalNetConf | None = None, backbone: nn.Module | None = None):
        super().__init__()
        self.conf = conf = conf or RetrievalNetConf()
        self.backbone = backbone if backbone is not None else build_samfeat_net(
            SAMFeatNetConf(arch=conf.arch))
        if self.backbone.conf.arch != conf.arch:
            raise ValueError(f"the backbone is {self.backbone.conf.arch!r} but arch={conf.arch!r}")
        self.backbone.requires_grad_(False)
        if conf.finetune_last:
            getattr(self.backbone, FEATURE_MAPS[conf.feature_map]).requires_grad_(True)
        dim = (self.backbone.conf.descriptor_dim if conf.feature_map == "desc_map"
               else self.backbone.conf.distill_dim)
        if conf.pooling == "netvlad":
            self.pool = NetVLAD(dim, conf.num_clusters)
            pooled = conf.num_clusters * dim
        else:
            self.pool = GeM(dim, conf.gem_dim, conf.gem_p)
            pooled = conf.gem_dim
        self.projection = None
        if conf.output_dim:
            self.projection = nn.Linear(pooled, conf.output_dim)
            nn.init.orthogonal_(self.projection.weight)
            nn.init.zeros_(self.projection.bias)
        self.descriptor_dim = conf.output_dim or pooled

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen BatchNorm statistics (a fine-tuned last layer has none)
        return self

    def dense(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [-1, 1] -> unit dense descriptors [B, D, h, w]."""
        # without a trainable backbone layer, no autograd graph through the backbone
        grad = torch.is_grad_enabled() and self.conf.finetune_last
        with torch.set_grad_enabled(grad):
            dense = self.backbone(image, detect=False)[self.conf.feature_map]
        # normalised in float32, handed on in the map's dtype (bfloat16 under autocast)
        return F.normalize(dense.float(), dim=1, eps=1e-12).to(dense.dtype)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """image [B, 3, H, W] in [-1, 1] -> {"global_descriptor": [B, descriptor_dim]}."""
        v = self.pool(self.dense(image))
        if self.projection is not None:
            with float32(v):
                v = F.linear(v, self.projection.weight.float(), self.projection.bias.float())
                v = F.normalize(v, dim=1, eps=1e-12)
        return {"global_descriptor": v}


def build_retrieval_net(conf: RetrievalNetConf, backbone_weights: str | Path | None = None
                        ) -> RetrievalNet:
    """A net whose backbone is loaded from a SAMFeat weights file (None: random, for tests)."""
    backbone = None
    if backbone_weights is not None:
        backbone = load_samfeat_net(backbone_weights, SAMFeatNetConf(arch=conf.arch))
    return RetrievalNet(conf, backbone)


def save_retrieval_net(net: RetrievalNet, path: str | Path, dtype: torch.dtype = torch.float32,
                       **meta) -> Path:
    """Save the net (floats cast to `dtype`) in the format `load_retrieval_net` reads."""
    from .weights import save_net

    return save_net(net, path, dtype, {"backbone_conf": asdict(net.backbone.conf)}, **meta)


def load_retrieval_net(path: str | Path) -> RetrievalNet:
    """A net (float32, eval mode) from an exported weights file or a training checkpoint
    (`ckpt_<step>.pt` of the `retrieval` task; its backbone's conf is read off its shapes)."""
    from ..config import make_conf
    from .weights import load_blob

    path = Path(path)
    blob = load_blob(path)
    backbone_conf = None
    if "net_conf" in blob and "state_dict" in blob:
        net_conf, state = blob["net_conf"], blob["state_dict"]
        backbone_conf = blob.get("backbone_conf")
    elif "model" in blob and blob.get("task") == "retrieval":
        names = {f.name for f in fields(RetrievalNetConf)}  # the task adds training-only keys
        net_conf = {k: v for k, v in blob["config"]["model"].items() if k in names}
        state = blob["model"]
    else:
        raise ValueError(f"{path} is neither retrieval weights (net_conf, state_dict) nor a "
                         "checkpoint of the `retrieval` training task")
    backbone = None
    if backbone_conf is not None:
        backbone = build_samfeat_net(make_conf(SAMFeatNetConf, backbone_conf))
    elif net_conf.get("arch", "lite") == "lite" and "backbone.block2.0.0.weight" in state:
        # a checkpoint holds no backbone conf: read it off the shapes (the shipped backbone
        # may have another width or the full-resolution branch)
        backbone = build_samfeat_net(lite_conf_from_state(state, "backbone."))
    net = RetrievalNet(make_conf(RetrievalNetConf, net_conf), backbone)
    try:
        net.load_state_dict({k: v.float() if v.is_floating_point() else v
                             for k, v in state.items()})
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit the retrieval network ({exc})") from None
    return net.eval()
