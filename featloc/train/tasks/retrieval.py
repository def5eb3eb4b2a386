"""Retrieval training task: a learned global descriptor (`featloc.models.retrieval`: NetVLAD or
GeM pooling + projection on a frozen SAMFeat-lite network) trained contrastively.

Items are pairs of views of the same place, both photometrically augmented:
- homographic (`data.image_dirs`): a random square crop of a cached image and its warp by a
  random homography (`sample_view_pair`), the attention task's sampler;
- posed (`data.posed_scenes`, `featloc make-scenes` folders): the two rendered views of a pair
  of pairs_gt.txt whose overlap (pairs_info.json) is at least `data.posed_min_overlap`, each a
  random square crop of its short side.

Loss: symmetric in-batch InfoNCE (NT-Xent) with temperature `losses.temperature` over the 2B
views of a batch: each view's positive is its partner, its negatives are the views of other
items, except those of the same group (the same source image, or the same scene). Two views
of one scene may overlap without being a listed pair, so within a scene only views whose
covisibility is known to be below `data.posed_neg_max_overlap` in both directions are
negatives: it is measured once per scene from the depth maps and poses
(`featloc.synth.scenes.covisibility_matrix`, cached in `data.cache_dir`). Those negatives
teach what localization needs: telling apart places of the same building.

Logged: `loss_nce`, `accuracy` (share of views more similar to their partner than to every
negative), `sim_pos`, `sim_neg_max` (mean hardest negative), `num_neg` (negatives per view).

NetVLAD clusters are initialised from the first training batch (k-means on its dense
descriptors, `NetVLAD.init_clusters`); the flag travels in the checkpoints. Posed images are
decoded once into the image cache (`featloc.train.data.cache`), downsized to 1.5 x the view
size.

What generalises (short CPU runs, tiny test runs): the learned projection fits a few hundred
training images fast, and on homographic pairs with mild augmentation it learned their
identities rather than invariances (held-out recall went down). Strong photometric
augmentation (gamma, colour cast) and the posed scenes' within-scene negatives are what the
untrained head lacks; with them, training raised held-out recall.

Validation (`val.num_queries` > 0): recall@1/5/10 of held-out query views (warps of epochs
never drawn for training, from `val.image_dirs`, default the training folders) against the
database of their full source images.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ...models.retrieval import (
    RetrievalNet,
    RetrievalNetConf,
    build_retrieval_net,
    float32,
    save_retrieval_net,
)
from ..data.augment import PhotometricConf, photometric
from ..data.cache import ImageCache, build_image_cache, digest
from ..data.homographies import HomographyConf, sample_view_pair
from ..data.matching import VAL_EPOCH, list_posed_pairs

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConf(RetrievalNetConf):
    # SAMFeat weights of the frozen backbone; "": the shipped featloc/weights/samfeat-lite.pt
    # (samfeat.pt for arch vgg)
    backbone_weights: str = ""
    init_descriptors: int = 50_000  # netvlad: dense descriptors sampled for the k-means init


@dataclass(frozen=True)
class DataConf:
    image_dirs: list[str] = field(default_factory=list)  # homographic pairs: image folders
    cache_dir: str = "outputs/cache"  # decoded images (shared with the other tasks)
    cache_max_side: int = 640  # images are downsized once so the longer side is <= this
    image_size: int = 224  # side of the square training views (px)
    crop_min: int = 200  # homographic crop side range in cached pixels (clipped to the image)
    crop_max: int = 480
    repeat: int = 1  # homographic items per image and epoch
    identity_prob: float = 0.0  # chance that view 1 is the crop itself (photometric only)
    homography: HomographyConf = field(default_factory=HomographyConf)
    photometric: PhotometricConf = field(default_factory=PhotometricConf)
    # posed pairs: folders written by `featloc make-scenes` (pairs_gt.txt, pairs_info.json)
    posed_scenes: list[str] = field(default_factory=list)
    posed_min_overlap: float = 0.3  # a listed pair is a positive from this overlap on
    # views of one scene are negatives when each sees less than this share of the other
    # (depth + poses); < 0: views of one scene are never negatives (only other scenes)
    posed_neg_max_overlap: float = 0.02
    posed_repeat: int = 1  # items per posed pair and epoch

    def __post_init__(self):
        if self.image_size < 32 or self.image_size % 16:
            raise ValueError(f"data.image_size must be a multiple of 16 >= 32, got "
                             f"{self.image_size}")
        if not 0 < self.crop_min <= self.crop_max:
            raise ValueError("need 0 < data.crop_min <= data.crop_max")
        if self.repeat < 0 or self.posed_repeat < 0:
            raise ValueError("data.repeat and data.posed_repeat must be >= 0")


@dataclass(frozen=True)
class LossConf:
    temperature: float = 0.05  # InfoNCE softmax temperature on cosine similarities

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError("losses.temperature must be > 0")


@dataclass(frozen=True)
class ValConf:
    num_queries: int = 0  # held-out query views; 0: no validation
    # folders of the validation sources; empty: the training folders (warps never trained on)
    image_dirs: list[str] = field(default_factory=list)
    resize_max: int = 320  # longer side of the database (source) images
    recall_at: list[int] = field(default_factory=lambda: [1, 5, 10])


# ------------------------------------------------------------------------------------ model


def build_model(conf) -> RetrievalNet:
    from ...features.samfeat import shipped_weights

    m = conf.model
    path = Path(m.backbone_weights) if m.backbone_weights else shipped_weights(m.arch)
    if not path.is_file():
        raise FileNotFoundError(f"model.backbone_weights: SAMFeat weights {path} not found")
    net_conf = RetrievalNetConf(**{k: getattr(m, k) for k in RetrievalNetConf.__dataclass_fields__})
    return build_retrieval_net(net_conf, path)


# ------------------------------------------------------------------------------------ data


def _warp(src: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    return cv2.warpPerspective(src, M, (size, size), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _square_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of the short side, resized to size x size."""
    h, w = image.shape[:2]
    side = min(h, w)
    y0, x0 = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = image[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def list_positive_pairs(scenes: list[str], min_overlap: float) -> list[tuple[int, object]]:
    """(scene index, posed pair) of every listed pair with at least `min_overlap` (all listed
    pairs when a scene has no pairs_info.json)."""
    out = []
    for s, folder in enumerate(scenes):
        info_path = Path(folder) / "pairs_info.json"
        overlap = {}
        if info_path.is_file():
            overlap = {(r["name0"], r["name1"]): float(r["overlap"])
                       for r in json.loads(info_path.read_text())}
        kept = 0
        for entry in list_posed_pairs([folder]):
            key = (entry.pair.name0, entry.pair.name1)
            if overlap.get(key, 1.0) >= min_overlap:
                out.append((s, entry))
                kept += 1
        if not kept:
            logger.warning("%s: no pair with overlap >= %.2f", folder, min_overlap)
    return out


def scene_covisibility(folder: str | Path, cache_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(image names, [V, V] float32 max of the two directional covisibilities) of a
    make-scenes folder, from its depth maps and COLMAP model; cached in `cache_dir`."""
    from ...io.colmap import camera_from_colmap, read_model
    from ...synth.scenes import covisibility_matrix

    root = Path(folder)
    model_file = root / "sparse" / "images.txt"
    if not model_file.is_file():
        raise FileNotFoundError(f"{model_file} not found: data.posed_scenes takes folders "
                                "written by `featloc make-scenes`")
    st = model_file.stat()
    key = digest({"scene": str(root.resolve()), "model": [st.st_size, st.st_mtime_ns],
                  "version": 1})
    path = Path(cache_dir) / f"covisibility-{key}.npz"
    if path.is_file():
        with np.load(path) as stored:
            return [str(n) for n in stored["names"]], stored["covisibility"]
    model = read_model(root / "sparse")
    cameras = {i: camera_from_colmap(c) for i, c in model.cameras.items()}
    images = sorted(model.images.values(), key=lambda im: im.name)
    depths = []
    for im in images:
        depth_file = root / "depth" / f"{Path(im.name).stem}.npy"
        if not depth_file.is_file():
            raise FileNotFoundError(f"{depth_file} not found (depth of {im.name})")
        depths.append(np.load(depth_file))
    cov = covisibility_matrix(depths, [cameras[im.camera_id] for im in images],
                              [im.cam_from_world for im in images])
    cov = np.maximum(cov, cov.T).astype(np.float32)
    names = [im.name for im in images]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, names=np.asarray(names), covisibility=cov)
    os.replace(tmp, path)
    logger.info("%s: covisibility of %d views -> %s", root, len(names), path)
    return names, cov


class RetrievalPairs(Dataset):
    """Two views of one place per item (module docstring).

    Item keys (V = the most views of a posed scene, at least 1):
        image0, image1 [3, S, S] uint8 RGB;
        group [] int64: the source image index, or the number of images + the scene index;
        views [2] int64: the two views' indices in their scene (-1: homographic);
        covisible [2, V] bool: the scene's views that each view overlaps (never negatives).
    Randomness: each item seeds its generators from (seed, epoch, index).

    Args:
        images: the decoded cache of `conf.image_dirs` (None: no homographic pairs).
        posed: the positive posed pairs (`list_positive_pairs`).
        posed_images: the decoded cache of the scenes' images/ folders (None: no posed pairs).
        covisibility: per posed scene, (image names, [V, V] covisibility); None: views of
            one scene are never negatives.
    """

    def __init__(self, conf: DataConf, images: ImageCache | None, seed: int,
                 posed: list | None = None, posed_images: ImageCache | None = None,
                 covisibility: list | None = None):
        self.conf, self.images, self.seed = conf, images, seed
        self.posed = list(posed or [])
        self.posed_images = posed_images
        self.posed_index = {}
        if posed_images is not None:  # (resolved images/ folder, name) -> cache index
            pairs = zip(posed_images.folders, posed_images.names, strict=True)
            self.posed_index = {(str(Path(f).resolve()), n): i for i, (f, n) in enumerate(pairs)}
        self.num_images = len(images) if images is not None else 0
        self.num_homographic = self.num_images * conf.repeat
        if len(self) == 0:
            raise ValueError("no training pairs: give data.image_dirs and/or data.posed_scenes")
        self.covisibility = None
        self.max_views = 1
        if covisibility is not None:
            self.covisibility = [({n: i for i, n in enumerate(names)}, cov)
                                 for names, cov in covisibility]
            self.max_views = max([1] + [len(cov) for _, cov in covisibility])

    def __len__(self) -> int:
        return self.num_homographic + len(self.posed) * self.conf.posed_repeat

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        rngs = [np.random.default_rng(s)
                for s in np.random.SeedSequence([self.seed, epoch, index]).spawn(4)]
        conf, S = self.conf, self.conf.image_size
        view_ids = np.full(2, -1, np.int64)  # -1 also for posed views without covisibility
        covisible = np.zeros((2, self.max_views), bool)
        if index < self.num_homographic:
            source = index % self.num_images
            src = self.images.image(source)
            M0, H = sample_view_pair(src.shape[:2], S, conf.crop_min, conf.crop_max,
                                     conf.identity_prob, conf.homography, rngs[0], rngs[1])
            views, group = (_warp(src, M0, S), _warp(src, H @ M0, S)), source
        else:
            scene, entry = self.posed[(index - self.num_homographic) % len(self.posed)]
            names = (entry.pair.name0, entry.pair.name1)
            folder = str((entry.scene / "images").resolve())
            views = tuple(_square_crop(self.posed_images.image(self.posed_index[(folder, n)]),
                                       S, rngs[i]) for i, n in enumerate(names))
            group = self.num_images + scene
            if self.covisibility is not None:
                lookup, cov = self.covisibility[scene]
                for i, name in enumerate(names):
                    view_ids[i] = lookup[name]
                    covisible[i, :len(cov)] = cov[view_ids[i]] >= conf.posed_neg_max_overlap
        out = {"group": torch.tensor(group, dtype=torch.int64),
               "views": torch.from_numpy(view_ids), "covisible": torch.from_numpy(covisible)}
        for i, (view, rng) in enumerate(zip(views, rngs[2:], strict=True)):
            view = photometric(np.ascontiguousarray(view), conf.photometric, rng)
            out[f"image{i}"] = torch.from_numpy(np.ascontiguousarray(view)).permute(2, 0, 1)
        return out


def build_datasets(conf) -> dict:
    data = conf.data
    if not data.image_dirs and not data.posed_scenes:
        raise ValueError("no training data: set data.image_dirs (homographic pairs) and/or "
                         "data.posed_scenes (featloc make-scenes folders)")
    images = build_image_cache(list(data.image_dirs), data.cache_dir, data.cache_max_side) \
        if data.image_dirs else None
    posed = list_positive_pairs(list(data.posed_scenes), data.posed_min_overlap)
    posed_images, covisibility = None, None
    if data.posed_scenes:  # decoded once, like the homographic images (no PNG per item),
        # just large enough for the square crop of the short side to be downsized
        posed_images = build_image_cache([str(Path(f) / "images") for f in data.posed_scenes],
                                         data.cache_dir, data.image_size * 3 // 2)
        if data.posed_neg_max_overlap >= 0:
            covisibility = [scene_covisibility(f, data.cache_dir) for f in data.posed_scenes]
    return {"train": RetrievalPairs(data, images, conf.train.seed, posed, posed_images,
                                    covisibility)}


# ------------------------------------------------------------------------------------ loss


def to_network_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float [-1, 1] (SAMFeat's input)."""
    return images.float() * (2 / 255) - 1


def negatives_mask(group: torch.Tensor, views: torch.Tensor, covisible: torch.Tensor
                   ) -> torch.Tensor:
    """[2B, 2B] bool: which view pairs may serve as negatives (view 0 of every item first).

    Views of items of different groups are negatives; within a group only posed views that
    do not see each other (`covisible` False both ways) are. The diagonal and the partners
    are False.
    """
    g = torch.cat([group, group])
    v = torch.cat([views[:, 0], views[:, 1]])
    cov = torch.cat([covisible[:, 0], covisible[:, 1]])  # [2B, V]
    sees = cov[:, v.clamp(min=0)]  # [i, j]: view i overlaps view j
    posed = v >= 0
    apart = posed[:, None] & posed[None, :] & ~sees & ~sees.T
    allowed = (g[:, None] != g[None, :]) | apart
    n = len(g)
    idx = torch.arange(n, device=g.device)
    allowed[idx, idx] = False
    allowed[idx, (idx + n // 2) % n] = False
    return allowed


def info_nce(desc: torch.Tensor, negatives: torch.Tensor, temperature: float
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric in-batch InfoNCE.

    Args:
        desc: [2B, D] unit descriptors, view 0 of every item first, then the views 1 (the
            positive of view i is view (i + B) mod 2B).
        negatives: [2B, 2B] bool, the pairs that are negatives (`negatives_mask`).
    Returns:
        the mean loss over the 2B anchors and metrics: accuracy (the partner is more similar
        than every negative), sim_pos, sim_neg_max (mean hardest negative), num_neg.
    """
    n = len(desc)
    with float32(desc):  # the trainer's autocast would compute the similarities in bf16
        sim = desc.float() @ desc.float().T  # [2B, 2B] cosine similarities
    idx = torch.arange(n, device=desc.device)
    partner = (idx + n // 2) % n
    keep = negatives.clone()
    keep[idx, partner] = True
    loss = F.cross_entropy((sim / temperature).masked_fill(~keep, float("-inf")), partner)
    with torch.no_grad():
        hardest = sim.masked_fill(~negatives, float("-inf")).max(1).values
        has_negative = negatives.any(1)
        pos = sim[idx, partner]
        metrics = {
            "accuracy": float((pos > hardest).float().mean().item()),
            "sim_pos": float(pos.mean().item()),
            "sim_neg_max": (float(hardest[has_negative].mean().item())
                            if has_negative.any() else 0.0),
            "num_neg": float(negatives.sum(1).float().mean().item()),
        }
    return loss, metrics


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def _init_clusters(net: RetrievalNet, images: torch.Tensor, conf) -> None:
    """k-means init of the NetVLAD clusters on the dense descriptors of a batch."""
    dense = net.dense(images).float()  # [N, D, h, w]
    flat = dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1])
    gen = torch.Generator().manual_seed(conf.train.seed)
    pick = torch.randperm(len(flat), generator=gen)[:conf.model.init_descriptors]
    net.pool.init_clusters(flat[pick.to(flat.device)].cpu(), seed=conf.train.seed)
    net.pool.to(images.device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for tensor in net.pool.state_dict().values():  # rank 0's clusters on every rank
            if tensor.is_floating_point():  # (each rank has set the flag itself)
                torch.distributed.broadcast(tensor, 0)
    logger.info("NetVLAD: %d clusters initialised by k-means on %d descriptors",
                net.conf.num_clusters, len(pick))


def compute_loss(model, batch: dict, conf) -> tuple[torch.Tensor, dict[str, float]]:
    images = to_network_input(torch.cat([batch["image0"], batch["image1"]]))
    net = _unwrap(model)
    if (net.conf.pooling == "netvlad" and torch.is_grad_enabled()
            and not bool(net.pool.clusters_initialized)):
        _init_clusters(net, images, conf)
    desc = model(images)["global_descriptor"]
    negatives = negatives_mask(batch["group"], batch["views"], batch["covisible"])
    loss, metrics = info_nce(desc, negatives, conf.losses.temperature)
    metrics["loss_nce"] = float(loss.item())
    if net.conf.pooling == "gem":
        metrics["gem_p"] = float(net.pool.p.item())
    return loss, metrics


# ------------------------------------------------------------------------------------ validation

_VAL_ITEMS: dict[str, tuple] = {}


def _val_items(conf) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(database images, query views, source index of each query), built once per process."""
    from ...io.images import resize_image

    key = digest({"data": asdict(conf.data), "val": asdict(conf.val), "seed": conf.train.seed})
    if key not in _VAL_ITEMS:
        data, v = conf.data, conf.val
        dirs = list(v.image_dirs) or list(data.image_dirs)
        if not dirs:
            raise ValueError("val.num_queries > 0 needs val.image_dirs or data.image_dirs")
        images = build_image_cache(dirs, data.cache_dir, data.cache_max_side)
        dataset = RetrievalPairs(replace(data, repeat=1), images, conf.train.seed)
        db = [resize_image(np.asarray(images.image(i)), v.resize_max)[0]
              for i in range(len(images))]
        picks = [i % len(images) for i in range(v.num_queries)]
        # view 1 (warped and augmented) of an epoch never drawn for training
        queries = [dataset[(VAL_EPOCH, i)]["image1"].permute(1, 2, 0).numpy() for i in picks]
        _VAL_ITEMS[key] = (db, queries, np.asarray(picks))
    return _VAL_ITEMS[key]


@torch.no_grad()
def describe_images(model: RetrievalNet, images: list[np.ndarray], batch_size: int = 16
                    ) -> np.ndarray:
    """[N, D] descriptors of uint8 RGB images (each side rounded to a multiple of 16)."""
    from ...features.samfeat import round_to_multiple

    device = next(model.parameters()).device
    out = np.zeros((len(images), model.descriptor_dim), np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    prepared = []
    for i, image in enumerate(images):
        h, w = image.shape[:2]
        size = (round_to_multiple(w), round_to_multiple(h))
        prepared.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                        if size != (w, h) else image)
        groups.setdefault(size, []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            x = torch.from_numpy(np.stack([prepared[i] for i in chunk])).permute(0, 3, 1, 2)
            desc = model(to_network_input(x.to(device)))["global_descriptor"]
            out[chunk] = desc.float().cpu().numpy()
    return out


def validate(model, conf) -> dict[str, float]:
    """Recall@k of held-out query views against the database of their source images."""
    v = conf.val
    if v.num_queries <= 0:
        return {}
    was_training = model.training
    model.eval()
    try:
        db, queries, truth = _val_items(conf)
        sim = describe_images(model, queries) @ describe_images(model, db).T
    finally:
        model.train(was_training)
    rank = (sim > sim[np.arange(len(truth)), truth][:, None]).sum(1)  # 0: the source is first
    return {f"recall@{k}": float(np.mean(rank < k)) for k in v.recall_at}


# ------------------------------------------------------------------------------------ export


def export(model, conf, path: Path, info: dict | None = None) -> Path:
    """Inference weights (`featloc.models.retrieval.load_retrieval_net`'s format, the SAMFeat
    backbone included, floats in fp16 or fp32; load them with `--global netvlad --global-conf
    weights=PATH` or ship them as featloc/weights/<name>.pt) and a JSON sidecar."""
    path = Path(path)
    info = dict(info or {})
    dtype = torch.float16 if conf.train.export_dtype == "fp16" else torch.float32
    meta = {"step": info.get("step"), "commit": info.get("commit"),
            "backbone_weights": conf.model.backbone_weights or f"shipped {conf.model.arch}"}
    tmp = path.with_name(path.name + ".tmp")
    save_retrieval_net(model, tmp, dtype, **meta)
    os.replace(tmp, path)
    sidecar = {"model": "retrieval", "net_conf": asdict(model.conf),
               "descriptor_dim": model.descriptor_dim, "dtype": conf.train.export_dtype, **meta,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "trainable_parameters": sum(p.numel() for p in model.parameters()
                                           if p.requires_grad),
               "config": info.get("config")}
    sidecar_path = path.with_suffix(".json")
    tmp = sidecar_path.with_name(sidecar_path.name + ".tmp")
    tmp.write_text(json.dumps(sidecar, indent=1, default=str))
    os.replace(tmp, sidecar_path)
    return path
