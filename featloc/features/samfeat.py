"""SAMFeat learned local features (methods.md 1.13) with torch or ONNX Runtime inference.

Registered as `samfeat` (the published VGG network) and `samfeat-lite` (the CPU-oriented
network of `featloc.models.samfeat`). Weights are the project's own: the shipped files
`featloc/weights/samfeat.pt` / `samfeat-lite.pt`, or any file given as `weights=PATH`.

Descriptors are L2-normalised by default (`descriptor_output="unit"`), for the `nn` matcher
and the learned matchers. The published matching is mutual nearest neighbours on the dot
product of the weighted descriptors `f = w * d` (norm = attention weight):
`descriptor_output="weighted"` with the matcher preset `nn-dot`. With the project's own
trained weights that mode suffers from hubness (the few highest-weight points are every
query's nearest neighbour): on held-out validation pairs after 1000 training steps it gave
1.7 mutual matches per pair against 344 with unit descriptors, so it is not the default.

Published inference settings (methods.md 1.13) are the `samfeat` defaults, except the keypoint
budget: `max_num_keypoints` is the project-wide 2048 (the HPatches export used 10,000).

Speed (samfeat-lite, 640x480, 2-core AVX-512-BF16 CPU, same-run medians): torch bfloat16
~21 ms, torch float32 ~32 ms, ONNX Runtime ~34 ms, OpenCV SIFT (2048 keypoints) ~40-50 ms.
The default `precision="auto"` picks bfloat16 where the CPU has native bfloat16. On a 2-core
AVX2 CPU without it (float32): ~55-65 ms, 0.69-0.76x SIFT; 0.56-0.60x with `backend="aoti"`
(compiled once per input size and machine, then loaded from the cache).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..io.images import resize_image, to_gray, to_rgb, to_uint8
from ..models.weights import shipped_weights as _shipped
from ..types import Features
from .base import Extractor, ExtractorConf

logger = logging.getLogger(__name__)

# Shipped weights file (in featloc/weights/) of each architecture.
WEIGHT_NAMES = {"vgg": "samfeat", "lite": "samfeat-lite"}
# Defaults that depend on the architecture (conf value None). vgg: the published inference.
# lite: the threshold only drops clear non-keypoints; the keypoint budget (top-k) does the
# selection. Under the weighted BCE (positive weight 200), p = 0.5 already means the model
# puts a pseudo-label at that pixel with probability ~0.5%, and a model trained for a few CPU
# hours is less confident than the published one, so 0.9 would starve the budget. lite skips
# the edge term (a train/test mismatch of the official code) and refines positions to
# sub-pixel accuracy (homography accuracy at 1 px depends on it, TRAINING.md).
ARCH_DEFAULTS = {
    "vgg": {"detection_threshold": 0.9, "add_edge_to_logits": True, "subpixel": False},
    "lite": {"detection_threshold": 0.5, "add_edge_to_logits": False, "subpixel": True},
}
BACKENDS = ("torch", "onnx", "aoti")
PRECISIONS = ("auto", "float32", "bfloat16")
DESCRIPTOR_OUTPUTS = ("weighted", "unit")
ONNX_OPSET = 17


@dataclass(frozen=True)
class SAMFeatConf(ExtractorConf):
    grayscale: bool = False  # SAMFeat takes RGB (a gray image is replicated to 3 channels)
    arch: str = "vgg"  # "vgg" (published network) or "lite" (CPU-oriented)
    weights: str = ""  # weights file; "": the shipped featloc/weights/<samfeat|samfeat-lite>.pt
    # keep pixels with sigmoid(logit) >= this; None: 0.9 for vgg (published), 0.5 for lite
    detection_threshold: float | None = None
    nms_radius: int = 4  # NMS window (2r+1)^2 (published r = 4)
    border_px: int = 4  # drop keypoints closer to the border (published 4 px)
    # add the upsampled edge probability to the logits (official inference, methods 1.13);
    # None: True for vgg, False for lite
    add_edge_to_logits: bool | None = None
    subpixel: bool | None = None  # soft-argmax refinement; None: False for vgg, True for lite
    subpixel_radius: int = 2  # refinement window (2r+1)^2 on the logits
    subpixel_temperature: float = 1.0  # softmax temperature on the logits (weights = odds^(1/T))
    # "torch", "onnx" (ONNX Runtime, CPU) or "aoti" (the network compiled ahead of time by
    # AOTInductor, CPU, float32: the fastest here; each new input size compiles once per
    # machine, 35-45 s on 2 cores with a C++ compiler, into the cache below)
    backend: str = "torch"
    device: str = "cpu"  # torch device ("cpu", "cuda", "cuda:1"); onnx and aoti run on cpu
    # "float32", "bfloat16" (torch autocast) or "auto": bfloat16 for lite on a device that
    # runs it natively (CPU with AVX-512/AMX bfloat16 kernels, CUDA with bfloat16), else
    # float32; vgg and the onnx backend use float32 (published numbers / ORT CPU)
    precision: str = "auto"
    # "unit": L2-normalised d (default, see the module docstring); "weighted": f = w * d
    # (published; match with "nn-dot")
    descriptor_output: str = "unit"
    batch_size: int = 4  # images per forward pass in extract_batch (same size only)
    # image scales to detect and describe at (keypoints of all scales pooled, best by score
    # kept); (1.0,): single scale
    scales: tuple[float, ...] = (1.0,)
    # exported graphs (onnx) and compiled packages (aoti); "": $FEATLOC_CACHE_DIR or
    # ~/.cache/featloc
    onnx_cache_dir: str = ""
    # torch backend: run the network through torch.compile (inductor, weights frozen). Each
    # new network input size compiles first (about 20-30 s on 2 cores; needs a C++ compiler
    # on CPU), so it pays off for many images of one size; see the README's Speed section
    compile: bool = False


def shipped_weights(arch: str) -> Path:
    """Path of the weights file shipped in the package for `arch` (it may not exist)."""
    return _shipped(WEIGHT_NAMES[arch])


def _missing_weights_message(arch: str, path: Path) -> str:
    name = WEIGHT_NAMES[arch]
    return (
        f"SAMFeat weights not found: {path} ({name} has no trained weights shipped yet; "
        f"random weights are never used as if trained). Train them with "
        f"`featloc train --config configs/train/{name}.yaml` and pass weights=PATH (CLI: "
        f"--extractor-conf weights=PATH), or place "
        f"the exported file at {path}."
    )


def round_to_multiple(side: int, multiple: int = 16) -> int:
    """`side` rounded to the nearest multiple (numpy rounding, at least one multiple)."""
    return max(multiple, int(np.round(side / multiple)) * multiple)


def cache_dir(conf_dir: str = "") -> Path:
    if conf_dir:
        return Path(conf_dir)
    if os.environ.get("FEATLOC_CACHE_DIR"):
        return Path(os.environ["FEATLOC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "featloc"


def native_bfloat16(device) -> bool:
    """Whether `device` (torch.device) runs bfloat16 convolutions natively (fast)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:  # oneDNN's check (true from AVX-512 on, where bfloat16 may be emulated) ...
            supported = bool(torch.backends.mkldnn.is_available()
                             and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
        try:  # ... narrowed to native bfloat16 instructions where the CPU flags are readable
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return supported
        return supported and ("avx512_bf16" in flags or "amx_bf16" in flags)
    return False


def _resolve_precision(conf: SAMFeatConf, device) -> str:
    if conf.precision != "auto":
        return conf.precision
    if conf.arch == "lite" and conf.backend == "torch" and native_bfloat16(device):
        return "bfloat16"
    return "float32"


def _warn_uncompiled(what: str, exc: Exception) -> None:
    """The warning of a failed compilation, after which the network runs uncompiled."""
    reason = (str(exc).strip().splitlines() or [""])[0]
    logger.warning("SAMFeat: %s failed (%s: %s); running the network uncompiled", what,
                   type(exc).__name__, reason)


def _num_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


class SAMFeat(Extractor):
    """SAMFeat keypoints and 128-d descriptors (methods.md 1.13).

    Inference: resize each side to a multiple of 16 (rounding), run the network, threshold
    sigmoid(S) (plus the edge map for vgg), NMS, border removal, top-k, optional sub-pixel
    refinement, bilinear descriptor sampling; keypoints are mapped back to original pixels
    with the pixel-centre convention.

    Args:
        conf: `SAMFeatConf`.
        net: an already-built network (e.g. random-init in tests); overrides `conf.weights`.
    """

    Conf = SAMFeatConf
    descriptor_dim = 128

    def __init__(self, conf: SAMFeatConf | None = None, net=None):
        conf = conf if conf is not None else self.Conf()
        self._validate(conf)
        import torch

        defaults = ARCH_DEFAULTS[conf.arch]
        resolved = {k: v for k, v in defaults.items() if getattr(conf, k) is None}
        resolved["precision"] = _resolve_precision(conf, torch.device(conf.device))
        super().__init__(dataclasses.replace(conf, **resolved))

        from ..models.samfeat import (
            SAMFeatNetConf,
            load_samfeat_net,
            prepare_for_inference,
        )

        self._torch = torch
        self.weights_file: Path | None = None  # the loaded file (see config.resolved_conf)
        if net is None:
            path = Path(conf.weights) if conf.weights else shipped_weights(conf.arch)
            if not path.is_file():
                if conf.weights:
                    raise FileNotFoundError(f"SAMFeat weights not found: {path}")
                raise FileNotFoundError(_missing_weights_message(conf.arch, path))
            net = load_samfeat_net(path, SAMFeatNetConf(arch=conf.arch))
            self.weights_file = path
        else:
            net = copy.deepcopy(net)  # fusing BatchNorm and the layout change are in place
        if net.conf.arch != conf.arch:
            raise ValueError(f"the network is {net.conf.arch!r} but arch={conf.arch!r}")
        self.descriptor_dim = net.conf.descriptor_dim
        self._device = torch.device(conf.device)
        # the onnx backend exports the network unwidened (ONNX Runtime has its own kernels)
        self.net = prepare_for_inference(
            net, self.conf.precision,
            cpu=self._device.type == "cpu" and conf.backend != "onnx")
        # float32 unit descriptors of a 1x1 head: computed at the keypoints, not over the
        # whole map (the same values to 1e-6; bfloat16 keeps the dense head, whose rounding
        # the published figures were measured with, and is fast where it is chosen)
        self._sparse_descriptors = (conf.descriptor_output == "unit"
                                    and self.conf.precision == "float32"
                                    and getattr(self.net, "sparse_descriptors", False))
        self._session = None
        self._compiled = None
        # aoti: input shape -> compiled model, and the order of its outputs; None after a
        # failed compilation (the network then runs uncompiled)
        self._aoti: dict | None = {} if conf.backend == "aoti" else None
        self._aoti_keys: tuple[str, ...] = ()
        if conf.backend == "onnx":
            self._session = self._onnx_session()
        else:
            self.net.to(self._device)
            if self._device.type == "cpu":
                # oneDNN convolutions are much faster in channels-last layout (2-20x in bf16).
                self.net.to(memory_format=torch.channels_last)
            if conf.compile:
                from torch._inductor import config as inductor_config

                # static shapes: dynamic ones measured slower than eager here
                self._compiled = torch.compile(self.net, dynamic=False)
                self._inductor_config = inductor_config

    @property
    def _graph_kwargs(self) -> dict:
        """Options of the network's forward pass (and of the onnx backend's graph; the
        default, dense graph is `featloc export-onnx`'s)."""
        return {"dense_descriptors": False} if self._sparse_descriptors else {}

    @staticmethod
    def _validate(conf: SAMFeatConf) -> None:
        checks = [
            ("arch", conf.arch, tuple(WEIGHT_NAMES)),
            ("backend", conf.backend, BACKENDS),
            ("precision", conf.precision, PRECISIONS),
            ("descriptor_output", conf.descriptor_output, DESCRIPTOR_OUTPUTS),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"SAMFeat: {name} must be one of {allowed}, got {value!r}")
        if conf.backend != "torch" and conf.device != "cpu":
            raise ValueError(f"SAMFeat: backend={conf.backend!r} runs on the CPU; use "
                             f"backend='torch' for device={conf.device!r}")
        if conf.backend != "torch" and conf.compile:
            raise ValueError("SAMFeat: compile=True is a torch backend option")
        if conf.backend != "torch" and conf.precision == "bfloat16":
            raise ValueError(f"SAMFeat: backend={conf.backend!r} runs in float32; bfloat16 is "
                             "a torch autocast option")
        if conf.batch_size < 1:
            raise ValueError(f"SAMFeat: batch_size must be >= 1, got {conf.batch_size}")
        if not conf.scales or any(not 0 < s <= 4 for s in conf.scales):
            raise ValueError(f"SAMFeat: scales must be in (0, 4], got {conf.scales!r}")

    # ---------------------------------------------------------------------------------------
    # ONNX Runtime backend

    def _onnx_session(self):
        import onnxruntime as ort

        from ..models.export import export_onnx_bytes

        model = None
        if self.weights_file is not None:
            path = self._cached_onnx_path()
            if not path.is_file():
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".tmp{os.getpid()}")
                    tmp.write_bytes(export_onnx_bytes(self.net, ONNX_OPSET, **self._graph_kwargs))
                    os.replace(tmp, path)  # atomic: concurrent processes never see half a file
                    logger.info("exported %s to %s", self.weights_file, path)
                except OSError as exc:
                    logger.warning("cannot cache the ONNX graph in %s (%s); exporting in memory",
                                   path.parent, exc)
            if path.is_file():
                model = str(path)
        if model is None:  # an in-memory network (tests) or no cache: nothing written to disk
            model = export_onnx_bytes(self.net, ONNX_OPSET, **self._graph_kwargs)
        options = ort.SessionOptions()
        options.intra_op_num_threads = _num_cores()
        # Without this the ORT threads spin after each run and steal the CPU from the torch
        # post-processing that follows (measured at 640x480 on 2 cores: 41 -> 32 ms).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _cached_onnx_path(self) -> Path:
        import onnxruntime as ort

        digest = self._graph_digest(opset=ONNX_OPSET, ort=ort.__version__)
        stem = self.weights_file.stem
        return cache_dir(self.conf.onnx_cache_dir) / "onnx" / f"{stem}-{digest}.onnx"

    def _graph_digest(self, **meta) -> str:
        """Cache key of an exported or compiled network: the weights file, the network code
        (`featloc/models/samfeat.py`, so that a changed forward pass never reuses a stale
        graph), its configuration and the graph options."""
        import json

        from ..models import samfeat as samfeat_models

        digest = hashlib.sha256(self.weights_file.read_bytes())
        digest.update(Path(samfeat_models.__file__).read_bytes())
        meta = {"net": dataclasses.asdict(self.net.conf), "torch": self._torch.__version__,
                **self._graph_kwargs, **meta}
        digest.update(json.dumps(meta, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    # ---------------------------------------------------------------------------------------
    # AOTInductor backend

    def _aoti_model(self, x):
        """The compiled model for inputs shaped like `x` (compiled on first use and cached on
        disk); None if compiling failed (the network then runs uncompiled)."""
        import tempfile

        from ..models.export import compile_aoti_package, load_aoti_package, output_keys

        shape = tuple(x.shape)
        if shape in self._aoti:
            return self._aoti[shape]
        if not self._aoti_keys:
            self._aoti_keys = output_keys(self.net, self._graph_kwargs)
        # in-memory networks, or a cache folder that cannot be written: a package for this
        # process only, removed once loaded
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.pt2"
            if self.weights_file is not None:
                torch = self._torch
                digest = self._graph_digest(
                    shape=shape, cpu=torch.backends.cpu.get_cpu_capability(),
                    threads=torch.get_num_threads())
                cached = cache_dir(self.conf.onnx_cache_dir) / "aoti" / (
                    f"{self.weights_file.stem}-{digest}-{'x'.join(map(str, shape))}.pt2")
                try:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    if cached.is_file() or os.access(cached.parent, os.W_OK):
                        path = cached
                    else:
                        raise PermissionError(f"{cached.parent} is not writable")
                except OSError as exc:
                    logger.warning("SAMFeat: cannot cache the compiled network in %s (%s); "
                                   "compiling it for this process only", cached.parent, exc)
            try:
                if not path.is_file():
                    logger.info("SAMFeat: compiling the network for %s inputs with AOTInductor "
                                "(once per input size; 35-45 s on 2 cores) into %s",
                                "x".join(map(str, shape[2:])), path)
                    compile_aoti_package(self.net, x, path, **self._graph_kwargs)
                model = load_aoti_package(path)
            except Exception as exc:  # e.g. no C++ compiler: the same network, uncompiled
                _warn_uncompiled("AOTInductor compilation", exc)
                self._aoti = None
                return None
        self._aoti[shape] = model
        return model

    # ---------------------------------------------------------------------------------------
    # Inference

    def extract(self, image: np.ndarray) -> Features:
        """Features of a numpy image: (H, W) or (H, W, 3|4), uint8/uint16/float in [0, 1]."""
        return self.extract_batch([image])[0]

    def extract_batch(self, images: list[np.ndarray]) -> list[Features]:
        """Features of several images; images of the same network input size share a pass."""
        if tuple(self.conf.scales) != (1.0,):
            return [self._multiscale(image) for image in images]
        return self._single_scale(images)

    def _multiscale(self, image: np.ndarray) -> Features:
        image = to_uint8(image)
        h, w = image.shape[:2]
        parts = []
        for scale in self.conf.scales:
            size = (max(16, round(w * scale)), max(16, round(h * scale)))
            scaled = image if size == (w, h) else cv2.resize(
                image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            f = self._single_scale([scaled])[0]
            ratio = np.array([size[0] / w, size[1] / h], np.float32)
            parts.append(((f.keypoints + 0.5) / ratio - 0.5, f.keypoint_scores, f.descriptors))
        xy, scores, desc = (np.concatenate(p) for p in zip(*parts, strict=True))
        order = np.argsort(-scores, kind="stable")
        if self.conf.max_num_keypoints > 0:
            order = order[:self.conf.max_num_keypoints]
        return Features(xy[order], scores[order], desc[order], (w, h))

    def _single_scale(self, images: list[np.ndarray]) -> list[Features]:
        prepared = [self._prepare(image) for image in images]
        results: list[Features | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (array, _, _) in enumerate(prepared):
            groups.setdefault(array.shape[:2], []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), self.conf.batch_size):
                chunk = indices[start:start + self.conf.batch_size]
                batch = np.stack([prepared[i][0] for i in chunk])
                infos = [prepared[i][1:] for i in chunk]
                for i, features in zip(chunk, self._run(batch, infos), strict=True):
                    results[i] = features
        return results

    def _prepare(self, image: np.ndarray):
        """uint8 RGB at the network size, total scale (sx, sy) = net / original, (w, h)."""
        image = to_uint8(image)
        h, w = image.shape[:2]
        image = to_rgb(to_gray(image)) if self.conf.grayscale else to_rgb(image)
        resized, (sx, sy) = resize_image(image, self.conf.resize_max or None)
        rh, rw = resized.shape[:2]
        nh, nw = round_to_multiple(rh), round_to_multiple(rw)
        if (nh, nw) != (rh, rw):
            interp = cv2.INTER_AREA if nh * nw < rh * rw else cv2.INTER_LINEAR
            resized = cv2.resize(resized, (nw, nh), interpolation=interp)
            sx, sy = sx * nw / rw, sy * nh / rh
        return np.ascontiguousarray(resized), (sx, sy), (w, h)

    def _forward(self, batch: np.ndarray) -> dict:
        """uint8 [B, H, W, 3] -> network outputs (torch tensors, CPU or device).

        Only what the post-processing reads is converted: float32 logits (and edge map);
        the descriptor and weight maps (or, for sparse descriptors, the feature map) keep the
        network's dtype and layout, since sampling touches only N points of them.
        """
        torch = self._torch

        # [B, H, W, 3] permuted to [B, 3, H, W] is already channels-last in memory.
        x = torch.from_numpy(batch).permute(0, 3, 1, 2)
        if self._session is not None:
            x = x.float().mul_(2.0 / 255).sub_(1.0).contiguous().numpy()
            keys = [o.name for o in self._session.get_outputs()]
            values = self._session.run(keys, {"image": x})
            return {k: torch.from_numpy(v) for k, v in zip(keys, values, strict=True)}
        x = x.to(self._device).float().mul_(2.0 / 255).sub_(1.0)
        if self._device.type != "cpu":
            x = x.contiguous()
        if self._aoti is not None:  # one image at a time: one compiled input size
            models = [self._aoti_model(x[i:i + 1]) for i in range(len(x))]
            if self._aoti is not None:
                parts = [dict(zip(self._aoti_keys, model(x[i:i + 1]), strict=True))
                         for i, model in enumerate(models)]
                return {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k]
                        for k in self._aoti_keys}
        bf16 = self.conf.precision == "bfloat16"
        with torch.autocast(self._device.type, torch.bfloat16, enabled=bf16):
            if self._compiled is not None:
                # Frozen weights: inductor prepacks the oneDNN convolutions and fuses their
                # activations. torch.compile(options={"freezing": True}) does not reach the
                # pass in torch 2.13 (aten convolutions in the profile, 1-2 ms slower).
                try:
                    with self._inductor_config.patch(freezing=True):
                        return self._compiled(x, **self._graph_kwargs)
                except Exception as exc:  # e.g. no C++ compiler: the same network, uncompiled
                    _warn_uncompiled("torch.compile", exc)
                    self._compiled = None
            return self.net(x, **self._graph_kwargs)

    def _scores(self, out: dict, size: tuple[int, int]):
        """The detection logits [B, H, W] that keypoints are selected from (network pixels)."""
        import torch.nn.functional as F

        scores = out["logits"][:, 0].float()
        if self.conf.add_edge_to_logits:
            edge = F.interpolate(out["edge"].float(), size=size, mode="bilinear",
                                 align_corners=False)
            scores = scores + edge[:, 0]
        return scores.contiguous()

    def score_map(self, image: np.ndarray) -> np.ndarray:
        """Dense detection probability [H, W] float32 of one image, in its own pixels.

        sigmoid of the logits that `extract` thresholds (with the edge map for vgg), at the
        network's single scale, resized back with the pixel-centre convention. Used as a
        teacher response for pseudo-labels (`featloc.train.labels`) and for pictures.
        """
        torch = self._torch
        array, _, (w, h) = self._prepare(image)
        with torch.inference_mode():
            out = self._forward(array[None])
            prob = torch.sigmoid(self._scores(out, array.shape[:2]))[0].cpu().numpy()
        if prob.shape != (h, w):
            prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
        return prob.astype(np.float32)

    def _run(self, batch: np.ndarray, infos) -> list[Features]:
        torch = self._torch
        from ..models.samfeat import detect_keypoints, logit, sample_descriptors

        conf = self.conf
        h, w = batch.shape[1:3]
        with torch.inference_mode():
            out = self._forward(batch)
            scores = self._scores(out, (h, w))
            detections = detect_keypoints(
                scores,
                logit(conf.detection_threshold),
                conf.nms_radius,
                conf.border_px,
                conf.max_num_keypoints,
                subpixel_radius=conf.subpixel_radius if conf.subpixel else 0,
                subpixel_temperature=conf.subpixel_temperature,
            )
            results = []
            for i, ((keypoints, kp_logits), (scale, size)) in enumerate(zip(detections, infos, strict=True)):
                if "feature" in out:  # unit descriptors computed at the keypoints only
                    desc = self.net.descriptors_at(out["feature"][i:i + 1], keypoints[None],
                                                   (h, w))[0]
                else:
                    desc, weights = sample_descriptors(
                        out["desc_map"][i:i + 1], out["weight_map"][i:i + 1], keypoints[None],
                        (h, w))
                    desc = desc[0].float()
                    if conf.descriptor_output == "weighted":
                        desc = desc * weights[0, :, None].float()
                xy = keypoints.cpu().numpy()
                # network pixels -> original pixels (pixel centres at integers)
                xy = (xy + 0.5) / np.asarray(scale, np.float32) - 0.5
                results.append(Features(
                    xy.astype(np.float32),
                    torch.sigmoid(kp_logits).cpu().numpy(),
                    desc.cpu().numpy().astype(np.float32, copy=False),
                    size,
                ))
        return results
