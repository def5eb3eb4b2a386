"""Configuration of the detector-free matchers (`featloc.models.dense`).

One `DenseNetConf` describes either network (`arch`: "samnet" or "coam"); the shared parts
(backbone, fine refinement, distillation adapter) have their own sections, and each
architecture reads only its own section. Field names carry units where they have one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ARCHS = ("samnet", "coam")
# Strides of the coarse matching grid and of the fine map, fixed: the fine window geometry,
# the ground truth of the training data and the keypoint quantisation all assume them.
COARSE_STRIDE = 8
FINE_STRIDE = 2


@dataclass(frozen=True)
class BackboneConf:
    # widths of the stages at 1/2, 1/4 and 1/8 (two conv-BN-ReLU each, stride-2 first)
    channels: list[int] = field(default_factory=lambda: [24, 48, 96])
    coarse_dim: int = 128  # d of the coarse features at 1/8 (attention width, descriptors)
    fine_dim: int = 32  # channels of the fine map at 1/2
    grayscale: bool = False  # feed one gray channel instead of RGB

    def __post_init__(self):
        if len(self.channels) != 3 or min(self.channels) < 1:
            raise ValueError(f"backbone.channels needs 3 positive widths (1/2, 1/4, 1/8), "
                             f"got {self.channels}")
        if self.coarse_dim % 4 or self.fine_dim < 1:
            raise ValueError("backbone.coarse_dim must be a multiple of 4 (2-D sinusoidal "
                             "encoding) and fine_dim >= 1")


@dataclass(frozen=True)
class SAMNetConf:
    """Hierarchical attention of SAM-Net (methods.md 3.2): every layer is a self block and a
    cross block; each block attends globally to the source map average-pooled by
    `global_pool` and locally to `window` x `window` keys bilinearly sampled around the flow
    (the expectation of the global attention), and fuses both messages."""

    num_layers: int = 3  # self + cross blocks each
    num_heads: int = 4
    global_pool: int = 4  # global level: keys/values pooled by this factor (coarsest grid)
    # local level: window x window keys per query group (ASpanFormer: 8; 4 for CPU cost;
    # even, so that self windows fall on cell centres)
    window: int = 4
    group: int = 2  # queries grouped group x group share one window (ASpanFormer: 2)
    # cross blocks: the window spans +- radius_scale flow standard deviations, sampled with a
    # spacing between 1 cell and max_span cells (ASpanFormer: span = 2 sigma * 5/8)
    radius_scale: float = 2.0
    max_span: float = 4.0

    def __post_init__(self):
        if self.num_layers < 1 or self.num_heads < 1 or self.global_pool < 1:
            raise ValueError("samnet.num_layers, num_heads and global_pool must be >= 1")
        if self.window < 2 or self.group < 1 or self.max_span < 1:
            raise ValueError("samnet.window must be >= 2, group >= 1, max_span >= 1")


@dataclass(frozen=True)
class CoAMConf:
    """CoAM (methods.md 4.2, CPU variant of 4.8): two stride-2 stages extend the backbone to
    1/16 and 1/32, co-attention conditions both levels on the other image, and a U-Net
    decoder brings the conditioned features back to the 1/8 descriptor grid."""

    extra_channels: list[int] = field(default_factory=lambda: [128, 192])  # 1/16, 1/32
    proj_dims: list[int] = field(default_factory=lambda: [64, 128])  # q/k dims at 1/16, 1/32
    decoder_dims: list[int] = field(default_factory=lambda: [128, 128])  # at 1/32, 1/16
    # softmax over unscaled logits (official); True: 1/sqrt(d) (a deviation, if unstable)
    scaled_attention: bool = False
    # False: the ablation without conditioning (self-concatenation, `fpn_nocond_conf`)
    conditioned: bool = True

    def __post_init__(self):
        for name in ("extra_channels", "proj_dims", "decoder_dims"):
            value = getattr(self, name)
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"coam.{name} needs 2 positive values (1/16, 1/32 or 1/32, "
                                 f"1/16), got {value}")


@dataclass(frozen=True)
class FineConf:
    window: int = 5  # fine window side on the 1/2 map (odd; LoFTR 5 = +-4 px)
    # attention heads inside the windows (self + cross block); 1: thousands of tiny windows
    # per pair, where the per-head kernel overhead dominates on CPU
    num_heads: int = 1
    # spatial transformer: predict an affine per match from the two coarse features and
    # resample image 1's window with it before the correlation (SAM-Net)
    align: bool = True

    def __post_init__(self):
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"fine.window must be odd and >= 3, got {self.window}")


@dataclass(frozen=True)
class DenseNetConf:
    arch: str = "samnet"  # samnet | coam
    backbone: BackboneConf = field(default_factory=BackboneConf)
    samnet: SAMNetConf = field(default_factory=SAMNetConf)
    coam: CoAMConf = field(default_factory=CoAMConf)
    fine: FineConf = field(default_factory=FineConf)
    temperature_init: float = 10.0  # learnable dual-softmax temperature (ASpanFormer: 10)
    # channels of the frozen teacher's descriptors (SAMFeat-lite: 128): a 1x1 adapter maps
    # the backbone's coarse map to them for the distillation loss; 0: no adapter
    distill_dim: int = 128

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "samnet" and self.backbone.coarse_dim % self.samnet.num_heads:
            raise ValueError(f"backbone.coarse_dim={self.backbone.coarse_dim} does not split "
                             f"into {self.samnet.num_heads} heads")
        if self.backbone.fine_dim % self.fine.num_heads:
            raise ValueError(f"backbone.fine_dim={self.backbone.fine_dim} does not split into "
                             f"{self.fine.num_heads} fine heads")
        if self.distill_dim < 0:
            raise ValueError("distill_dim must be >= 0")
