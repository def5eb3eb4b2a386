"""What SAM-Net and CoAM share around their coarse features: the dual-softmax and mutual
nearest-neighbour coarse matching, padding and validity of the coarse grid, the fine
refinement of the matches, the distillation adapter, and the inference path `match`.

A subclass implements
- `encode_pair(image0, image1) -> dict` with coarse0/coarse1 [B, h*w, C] (the features the
  coarse level matches), grid0/grid1 (h, w), fine0/fine1 [B, Cf, H/2, W/2] and
  backbone0/backbone1 [B, C, h, w] (per-image coarse maps, for distillation), plus its own
  outputs;
- `similarity(out) -> [B, N0, N1]` float32 logits of the dual-softmax;
- `coarse_match(out, valid0, valid1, threshold, max_points) -> (i0, i1, scores)` for one
  pair (inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import cell_grid, cells_to_pixels, texture_mask
from .conf import COARSE_STRIDE, DenseNetConf
from .refine import FineRefiner


def dual_softmax(sim: torch.Tensor) -> torch.Tensor:
    """[..., N0, N1] logits -> softmax over rows times softmax over columns (float32)."""
    sim = sim.float()
    return F.softmax(sim, -1) * F.softmax(sim, -2)


def mutual_matches(scores: torch.Tensor, threshold: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of a [N0, N1] score matrix with score > threshold.

    Returns (i0 [K], i1 [K] int64, scores [K]), sorted by i0.
    """
    n0, n1 = scores.shape
    empty = scores.new_zeros(0, dtype=torch.long)
    if n0 == 0 or n1 == 0:
        return empty, empty, scores.new_zeros(0)
    best0 = scores.max(1)
    best1 = scores.argmax(0)
    i0 = torch.arange(n0, device=scores.device)
    keep = (best1[best0.indices] == i0) & (best0.values > threshold)
    return i0[keep], best0.indices[keep], best0.values[keep]


def dual_softmax_matches(sim: torch.Tensor, threshold: float
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mutual nearest neighbours of the dual-softmax of one pair's [N0, N1] logits with
    confidence > threshold (inference; the output of `mutual_matches`). `sim` is consumed.

    The matrix is the largest tensor of the inference (92 MB at 640x480) and every pass over
    it costs as much as a transformer layer on CPU, so it is computed in place in few passes:
    E = exp(s - max s), then sqrt(P) = E / sqrt(rowsum(E) colsum(E)) (the dual-softmax is
    the square of that), whose row and column maxima are those of P. Rows or columns that
    underflow (logits far below the global maximum) fall back to log-sum-exp.
    """
    sim = sim.float()
    if sim.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=sim.device)
        return empty, empty, sim.new_zeros(0)
    e = (sim - sim.max()).exp_()
    rows, cols = e.sum(1), e.sum(0)
    if bool((rows == 0).any() or (cols == 0).any()):
        del e  # exact, only slower
        conf = sim.mul(2).sub_(torch.logsumexp(sim, 1, keepdim=True))
        conf = conf.sub_(torch.logsumexp(sim, 0, keepdim=True)).exp_()
        return mutual_matches(conf, threshold)
    root = e.mul_(rows.rsqrt()[:, None]).mul_(cols.rsqrt()[None])
    i0, i1, scores = mutual_matches(root, threshold ** 0.5 if threshold > 0 else threshold)
    return i0, i1, scores * scores


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad [B, C, H, W] at the bottom and right to multiples of `multiple`."""
    h, w = image.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return image
    return F.pad(image, (0, pw, 0, ph), mode="replicate")


def inside_cells(cells_hw: tuple[int, int], image_hw: tuple[int, int], device) -> torch.Tensor:
    """[h*w] bool: cells whose centre lies inside the (unpadded) image."""
    h, w = cells_hw
    centres = cells_to_pixels(cell_grid(h, w, device), COARSE_STRIDE)
    H, W = image_hw
    return (centres[:, 0] <= W - 0.5) & (centres[:, 1] <= H - 0.5)


def border_cells(cells_hw: tuple[int, int], image_hw: tuple[int, int], border: int,
                 device) -> torch.Tensor:
    """[h*w] bool: cells at least `border` cells away from the image's last full cells."""
    h, w = cells_hw
    if border <= 0:
        return torch.ones(h * w, dtype=torch.bool, device=device)
    H, W = image_hw
    last_x, last_y = (W + COARSE_STRIDE - 1) // COARSE_STRIDE, (H + COARSE_STRIDE - 1) // COARSE_STRIDE
    xy = cell_grid(h, w, device)
    return ((xy[:, 0] >= border) & (xy[:, 0] < last_x - border)
            & (xy[:, 1] >= border) & (xy[:, 1] < last_y - border))


class DenseMatchingNet(nn.Module):
    """Base of the detector-free matchers (module docstring)."""

    # images are padded to multiples of this (the coarsest level of the network)
    size_multiple = COARSE_STRIDE

    def __init__(self, conf: DenseNetConf):
        super().__init__()
        self.conf = conf
        self.refiner = FineRefiner(conf.fine, conf.backbone.coarse_dim, conf.backbone.fine_dim)
        self.log_temperature = nn.Parameter(torch.tensor(float(conf.temperature_init)).log())
        self.distill_adapter = (nn.Conv2d(conf.backbone.coarse_dim, conf.distill_dim, 1)
                                if conf.distill_dim else None)

    # -- subclass interface ----------------------------------------------------------------
    def encode_pair(self, image0: torch.Tensor, image1: torch.Tensor) -> dict:
        raise NotImplementedError

    def similarity(self, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def coarse_match(self, out: dict, valid0: torch.Tensor, valid1: torch.Tensor,
                     threshold: float, max_points: int):
        raise NotImplementedError

    # -- training --------------------------------------------------------------------------
    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> dict:
        """Batched forward for training.

        Args:
            image0, image1: [B, 3, H, W] in [-1, 1], H and W multiples of `size_multiple`.
        Returns:
            the `encode_pair` outputs plus sim [B, N0, N1] (float32 dual-softmax logits)
            and, with a distillation adapter, distill0/distill1 [B, distill_dim, h, w].
        """
        for image in (image0, image1):
            if image.shape[-2] % self.size_multiple or image.shape[-1] % self.size_multiple:
                raise ValueError(f"image sides must be multiples of {self.size_multiple}, got "
                                 f"{tuple(image.shape[-2:])}")
        out = self.encode_pair(image0, image1)
        out["sim"] = self.similarity(out)
        if self.distill_adapter is not None:
            out["distill0"] = self.distill_adapter(out["backbone0"])
            out["distill1"] = self.distill_adapter(out["backbone1"])
        return out

    def refine(self, out: dict, batch: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor
               ) -> dict[str, torch.Tensor]:
        """Fine refinement of coarse matches (cell i0 of image 0 in batch item `batch` with
        cell i1 of image 1), all [M]; see `FineRefiner.forward` (also returns points0)."""
        (h0, w0), (h1, w1) = out["grid0"], out["grid1"]
        dev = out["coarse0"].device
        p0 = cells_to_pixels(cell_grid(h0, w0, dev)[i0], COARSE_STRIDE)
        p1 = cells_to_pixels(cell_grid(h1, w1, dev)[i1], COARSE_STRIDE)
        f0 = out["coarse0"][batch, i0]
        f1 = out["coarse1"][batch, i1]
        result = self.refiner(out["fine0"], out["fine1"], batch, p0, p1, f0, f1)
        result["points0"] = p0
        return result

    # -- inference -------------------------------------------------------------------------
    @torch.no_grad()
    def match(self, image0: torch.Tensor, image1: torch.Tensor, threshold: float,
              max_matches: int = 0, min_texture: float = 0.01, border: int = 0,
              refine: bool = True, max_points: int = 0) -> dict[str, torch.Tensor]:
        """Match one pair of any size.

        Args:
            image0, image1: [1, 3, H, W] in [-1, 1] (unpadded; sizes may differ).
            threshold: coarse score threshold (dual-softmax confidence or CoAM score).
            max_matches: keep the best this many by score; 0: all.
            min_texture: cells in blank regions (intensity std below this) never match.
            border: drop coarse cells closer than this many cells to the image border.
            refine: sub-pixel refinement of image 1's points (else coarse cell centres).
            max_points: CoAM: points per image kept by distinctiveness; 0: all.
        Returns:
            keypoints0, keypoints1 [K, 2] float32 pixels of the given images, scores [K]
            float32, sorted by descending score.
        """
        dev = image0.device
        sizes = [tuple(image.shape[-2:]) for image in (image0, image1)]
        empty = {"keypoints0": torch.zeros(0, 2, device=dev),
                 "keypoints1": torch.zeros(0, 2, device=dev),
                 "scores": torch.zeros(0, device=dev)}
        if any(min(s) == 0 for s in sizes):
            return empty
        padded = [pad_to_multiple(image, self.size_multiple) for image in (image0, image1)]
        out = self.encode_pair(*padded)
        valid = []
        for i, image in enumerate((image0, image1)):
            cells = out[f"grid{i}"]
            v = inside_cells(cells, sizes[i], dev) & border_cells(cells, sizes[i], border, dev)
            if min_texture > 0:
                v &= texture_mask(image, cells, COARSE_STRIDE, min_texture)
            valid.append(v)
        i0, i1, scores = self.coarse_match(out, valid[0], valid[1], threshold, max_points)
        if len(i0) == 0:
            return empty
        batch = torch.zeros_like(i0)
        if refine:
            ref = self.refine(out, batch, i0, i1)
            p0, p1 = ref["points0"], ref["points1"]
        else:
            (h0, w0), (h1, w1) = out["grid0"], out["grid1"]
            p0 = cells_to_pixels(cell_grid(h0, w0, dev)[i0], COARSE_STRIDE)
            p1 = cells_to_pixels(cell_grid(h1, w1, dev)[i1], COARSE_STRIDE)
        H1, W1 = sizes[1]
        inside = ((p1[:, 0] >= -0.5) & (p1[:, 0] <= W1 - 0.5)
                  & (p1[:, 1] >= -0.5) & (p1[:, 1] <= H1 - 0.5))
        p0, p1, scores = p0[inside], p1[inside], scores[inside].float()
        order = torch.argsort(scores, descending=True, stable=True)
        if max_matches > 0:
            order = order[:max_matches]
        return {"keypoints0": p0[order].float(), "keypoints1": p1[order].float(),
                "scores": scores[order]}
