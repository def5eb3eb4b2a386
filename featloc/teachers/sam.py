"""`sam` teacher: Segment Anything (through `transformers`) as in methods 1.8.

- embedding: the image-encoder output after the neck ([256, 64, 64] for the standard
  1024 x 1024 input), float16. By default it is cropped to the cells that cover the image:
  SAM resizes the longer side to 1024 and pads the rest, so for a non-square image the
  bottom/right cells only see padding (`crop_embedding=False` keeps the full square).
- groups: SAM's automatic mask generator, re-implemented here (transformers ships the pieces
  but its NMS needs torchvision): a grid of single-point prompts (default 32 x 32, batched),
  three masks per point, kept if predicted IoU > 0.88 and stability score > 0.95, then
  non-maximum suppression (box IoU 0.7, as SAM; or mask IoU). Masks are rasterised to one id
  map, each pixel taking the id of the smallest covering mask (0: none).
- edges: a pixel is an edge if a 4-neighbour has another group id, dilated by 1 px.

Weights are read from a LOCAL folder only (`SamModel.save_pretrained` output or a Hugging
Face snapshot folder of e.g. facebook/sam-vit-huge: config.json + model.safetensors); nothing
is downloaded. The original segment-anything `.pth` checkpoints must first be converted with
transformers' `convert_sam_to_hf.py`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import ConfigError
from .base import Teacher, TeacherTargets, edges_from_groups, masks_to_groups

logger = logging.getLogger(__name__)

# SAM's preprocessing defaults (ImageNet statistics), used when the weights folder has no
# preprocessor_config.json
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
NMS_MODES = ("box", "mask")
MASK_NMS_SIDE_PX = 256  # mask-IoU NMS compares masks subsampled to at most this side
UPSCALE_CHUNK = 32  # masks upsampled to full resolution at a time (bounds memory)


@dataclass(frozen=True)
class SamConf:
    # local folder with config.json + model.safetensors (never downloaded)
    weights: str = ""
    points_per_side: int = 32  # prompt grid is points_per_side^2 single points
    points_per_batch: int = 64  # prompts decoded at once (memory vs speed only)
    pred_iou_thresh: float = 0.88  # keep masks with a higher predicted IoU (0: off)
    stability_score_thresh: float = 0.95  # keep masks with a higher stability (0: off)
    stability_score_offset: float = 1.0  # logit offset of the stability score
    mask_threshold: float = 0.0  # logit threshold binarising the masks
    nms: str = "box"  # box (SAM's AMG) | mask (IoU of the masks themselves)
    nms_iou_thresh: float = 0.7  # drop masks overlapping a better one more (1: off)
    min_mask_area_px: int = 1  # drop masks with fewer pixels
    groups: bool = True  # run the mask generator (groups, edges); False: embedding only
    embedding: bool = True  # return the encoder embedding
    crop_embedding: bool = True  # crop the embedding to the cells that cover the image
    edge_dilation_px: int = 1  # dilation of the group boundaries (methods 1.8.3)
    device: str = "auto"  # cpu | cuda | cuda:N | auto (cuda when available)


@dataclass
class SamMasks:
    """Masks kept by the automatic mask generator, best predicted IoU first.

    Attributes:
        masks: bool [K, H, W] at the image resolution.
        iou_scores: float32 [K] predicted IoU.
        stability_scores: float32 [K].
        boxes: float32 [K, 4] (x0, y0, x1, y1), inclusive pixel bounds.
        points: float32 [K, 2] (x, y) image pixel of the prompt that produced the mask.
    """

    masks: np.ndarray
    iou_scores: np.ndarray
    stability_scores: np.ndarray
    boxes: np.ndarray
    points: np.ndarray

    def __len__(self) -> int:
        return len(self.masks)


class SamTeacher(Teacher):
    """SAM embedding, automatic-mask groups and their edges for one image."""

    Conf = SamConf
    runtime_keys = ("points_per_batch", "device")

    def __init__(self, conf: SamConf | None = None):
        super().__init__(conf)
        c = self.conf
        if not c.weights:
            raise ConfigError(
                "sam teacher: set weights= to a local SAM folder (config.json + model.safetensors)"
            )
        if c.nms not in NMS_MODES:
            raise ConfigError(
                f"sam teacher: nms must be one of {NMS_MODES}, got {c.nms!r}"
            )
        if c.points_per_side < 1 or c.points_per_batch < 1:
            raise ConfigError(
                "sam teacher: points_per_side and points_per_batch must be >= 1"
            )
        if not (c.groups or c.embedding):
            raise ConfigError(
                "sam teacher: groups and embedding are both off; nothing to compute"
            )
        self.provides = frozenset(
            (["groups", "edges"] if c.groups else [])
            + (["embedding"] if c.embedding else [])
        )
        self.model = _load_model(Path(c.weights), c.device)
        self.device = next(self.model.parameters()).device
        self.input_size = int(self.model.config.vision_config.image_size)
        mean, std = _normalisation(Path(c.weights))
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)

    # -- encoder -------------------------------------------------------------------------

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """SAM input of an RGB uint8 image: longer side resized to the encoder size (PIL
        bilinear), normalised, zero-padded bottom/right to a square.

        Returns:
            float32 [3, S, S] and the resized (height, width) before padding.
        """
        from PIL import Image

        h, w = image.shape[:2]
        new_h, new_w = _resized_shape(h, w, self.input_size)
        resized = np.asarray(
            Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
        )
        normed = (resized.astype(np.float32) / 255.0 - self._mean) / self._std
        padded = np.zeros((self.input_size, self.input_size, 3), np.float32)
        padded[:new_h, :new_w] = normed
        return padded.transpose(2, 0, 1), (new_h, new_w)

    def encode(self, image: np.ndarray):
        """The encoder output (torch float32 [1, C, E, E]) and the resized (height, width)."""
        import torch

        pixels, resized = self.preprocess(image)
        with torch.inference_mode():
            embedding = self.model.get_image_embeddings(
                torch.from_numpy(pixels)[None].to(self.device)
            )
        return embedding, resized

    def _embedding_array(self, embedding, resized: tuple[int, int]) -> np.ndarray:
        out = embedding[0]
        if self.conf.crop_embedding:
            cell = self.input_size / out.shape[-1]
            out = out[:, : math.ceil(resized[0] / cell), : math.ceil(resized[1] / cell)]
        return out.float().cpu().numpy().astype(np.float16)

    # -- automatic mask generator ----------------------------------------------------------

    def generate_masks(self, image: np.ndarray, encoded=None) -> SamMasks:
        """Automatic masks of an RGB uint8 image (`encoded`: the output of `encode`)."""
        import torch

        c = self.conf
        h, w = image.shape[:2]
        embedding, resized = encoded if encoded is not None else self.encode(image)
        points = point_grid(c.points_per_side) * np.array(
            [w, h], np.float32
        )  # image pixels
        scale = np.array([resized[1] / w, resized[0] / h], np.float32)
        prompts = torch.from_numpy(points * scale)  # SAM input pixels
        parts = [
            self._decode(
                embedding, prompts[i : i + c.points_per_batch], i, resized, (h, w)
            )
            for i in range(0, len(prompts), c.points_per_batch)
        ]
        masks, iou, stability, src = (
            torch.cat([part[k] for part in parts]) for k in range(4)
        )
        boxes = masks_to_boxes(masks)
        overlap = box_iou(boxes, boxes) if c.nms == "box" else mask_iou(masks)
        order = nms(overlap, iou, c.nms_iou_thresh)
        return SamMasks(
            masks=masks[order].numpy(),
            iou_scores=iou[order].numpy().astype(np.float32),
            stability_scores=stability[order].numpy().astype(np.float32),
            boxes=boxes[order].numpy().astype(np.float32),
            points=points[src[order].numpy()].reshape(-1, 2),
        )

    def _decode(self, embedding, prompts, first: int, resized, size):
        """Masks of a batch of point prompts that pass the quality filters (on the CPU):
        bool [N, H, W], predicted IoU [N], stability [N], prompt index [N]."""
        import torch

        c = self.conf
        n = len(prompts)
        with torch.inference_mode():
            out = self.model(
                image_embeddings=embedding,
                input_points=prompts.to(self.device)[None, :, None, :],
                input_labels=torch.ones(
                    (1, n, 1), dtype=torch.int64, device=self.device
                ),
                multimask_output=True,
            )
        logits = out.pred_masks[0].flatten(0, 1)  # [n * 3, s, s], low resolution
        iou = out.iou_scores[0].flatten().float().cpu()
        src = torch.arange(first, first + n).repeat_interleave(out.iou_scores.shape[-1])
        keep = _above(iou, c.pred_iou_thresh)
        logits, iou, src = logits[keep.to(logits.device)], iou[keep], src[keep]
        masks, ious, stabilities, sources = (
            [torch.zeros((0, *size), dtype=torch.bool)],
            [],
            [],
            [],
        )
        for i in range(0, len(logits), UPSCALE_CHUNK):
            chunk = slice(i, i + UPSCALE_CHUNK)
            full = self._upscale(logits[chunk], resized, size)
            stability = stability_score(
                full, c.mask_threshold, c.stability_score_offset
            ).cpu()
            ok = _above(stability, c.stability_score_thresh)
            binary = (full[ok.to(full.device)] > c.mask_threshold).cpu()
            big = binary.flatten(1).sum(1) >= max(1, c.min_mask_area_px)
            masks.append(binary[big])
            ious.append(iou[chunk][ok][big])
            stabilities.append(stability[ok][big])
            sources.append(src[chunk][ok][big])
        return (
            torch.cat(masks),
            torch.cat(ious + [torch.zeros(0)]),
            torch.cat(stabilities + [torch.zeros(0)]),
            torch.cat(sources + [torch.zeros(0, dtype=torch.int64)]),
        )

    def _upscale(self, logits, resized: tuple[int, int], size: tuple[int, int]):
        """Low-resolution mask logits [N, s, s] -> logits [N, H, W] at the image size
        (SAM's postprocess_masks: to the padded input, crop the padding, to the image)."""
        import torch.nn.functional as F

        x = F.interpolate(
            logits[:, None].float(),
            (self.input_size, self.input_size),
            mode="bilinear",
            align_corners=False,
        )
        x = x[..., : resized[0], : resized[1]]
        return F.interpolate(x, size, mode="bilinear", align_corners=False)[:, 0]

    # -- teacher ---------------------------------------------------------------------------

    def _targets(self, image: np.ndarray, name: str) -> TeacherTargets:
        encoded = self.encode(image)
        targets = TeacherTargets()
        if self.conf.embedding:
            targets.embedding = self._embedding_array(*encoded)
        if self.conf.groups:
            masks = self.generate_masks(image, encoded)
            targets.groups = masks_to_groups(masks.masks)
            targets.edges = edges_from_groups(
                targets.groups, self.conf.edge_dilation_px
            )
        return targets


# -- pure helpers (torch) ----------------------------------------------------------------------


def _above(values, thresh: float):
    """values > thresh, or all True when the filter is off (thresh <= 0, as in SAM)."""
    import torch

    return values > thresh if thresh > 0 else torch.ones_like(values, dtype=torch.bool)


def point_grid(n_per_side: int) -> np.ndarray:
    """SAM's prompt grid: cell centres of an n x n grid over [0, 1]^2, (x, y), row-major."""
    offset = 1.0 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side, dtype=np.float32)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], -1).reshape(-1, 2)


def stability_score(logits, mask_threshold: float, offset: float):
    """IoU between the masks binarised at threshold +/- offset (SAM); [N, H, W] -> [N]."""
    inter = (logits > mask_threshold + offset).flatten(1).sum(1)
    union = (logits > mask_threshold - offset).flatten(1).sum(1)
    return inter.float() / union.float().clamp(min=1)


def masks_to_boxes(masks):
    """Boxes (x0, y0, x1, y1) with inclusive pixel bounds of bool masks [N, H, W]; 0s if empty."""
    import torch

    n = masks.shape[0]
    if n == 0:
        return torch.zeros((0, 4))
    h, w = masks.shape[-2:]
    rows, cols = masks.any(2), masks.any(1)
    ys, xs = torch.arange(h), torch.arange(w)
    y1 = torch.where(rows, ys, -1).max(1).values
    x1 = torch.where(cols, xs, -1).max(1).values
    y0 = torch.where(rows, ys, h).min(1).values
    x0 = torch.where(cols, xs, w).min(1).values
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    boxes[~rows.any(1)] = 0
    return boxes


def box_iou(a, b):
    """Pairwise IoU of boxes [N, 4] and [M, 4] (area = (x1 - x0) * (y1 - y0), torchvision's)."""
    import torch

    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(
        union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter)
    )


def mask_iou(masks):
    """Pairwise IoU [N, N] of bool masks [N, H, W], on masks subsampled to <= 256 px a side."""
    n = masks.shape[0]
    step = max(1, math.ceil(max(masks.shape[-2:], default=1) / MASK_NMS_SIDE_PX))
    flat = masks[:, ::step, ::step].reshape(n, -1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return inter / union.clamp(min=1)


def nms(overlap, scores, iou_thresh: float):
    """Greedy non-maximum suppression: indices kept, best score first.

    Args:
        overlap: [N, N] pairwise IoU.
        scores: [N].
        iou_thresh: a candidate overlapping an already kept one by more than this is dropped.
    """
    import torch

    order = torch.argsort(scores, descending=True, stable=True)
    suppressed = torch.zeros(len(scores), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i] > iou_thresh
    return torch.as_tensor(keep, dtype=torch.int64)


# -- loading ---------------------------------------------------------------------------------


def _resized_shape(h: int, w: int, longest: int) -> tuple[int, int]:
    scale = longest / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _load_model(weights: Path, device: str):
    import torch

    if not weights.is_dir() or not (weights / "config.json").is_file():
        raise FileNotFoundError(
            f"SAM weights {weights}: expected a local folder with config.json and "
            "model.safetensors (SamModel.save_pretrained output or a Hugging Face snapshot "
            "folder); original segment-anything .pth files must be converted first"
        )
    from transformers import SamModel

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SamModel.from_pretrained(str(weights), local_files_only=True)
    model.eval().requires_grad_(False)
    return model.to(device)


def _normalisation(weights: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = weights / "preprocessor_config.json"
    if not path.is_file():
        return IMAGE_MEAN, IMAGE_STD
    conf = json.loads(path.read_text())
    return tuple(conf.get("image_mean", IMAGE_MEAN)), tuple(
        conf.get("image_std", IMAGE_STD)
    )
