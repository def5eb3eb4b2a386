"""ONNX export of the project's networks (dynamic batch and image size), and ahead-of-time
compilation with AOTInductor (one input size).

The exported graph has one input `image` [B, 3, H, W] (float32 in [-1, 1], H and W multiples
of 16) and the network's outputs under their dict keys (for SAMFeat: `logits`, `desc_map`,
`weight_map`, `distill`, `edge`; an extractor's float32 lite network has `distill`, which only
training reads, folded away: `fold_distillation`). Post-processing (NMS, sampling) is not in
the graph: the `onnx` backend of the extractors runs the same torch code on the ONNX outputs.
The `aoti` backend does the same with a package compiled by `compile_aoti_package`.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Traced with a non-square size so that no axis is specialised to the other's length.
_TRACE_HW = (64, 96)


class _TupleOutputs(nn.Module):
    """Wrap a dict-returning network so that the graph outputs follow a fixed key order."""

    def __init__(self, net: nn.Module, keys: tuple[str, ...], forward_kwargs: dict):
        super().__init__()
        self.net, self.keys, self.forward_kwargs = net, keys, forward_kwargs

    def forward(self, image):
        out = self.net(image, **self.forward_kwargs)
        return tuple(out[k] for k in self.keys)


def output_keys(net: nn.Module, forward_kwargs: dict) -> tuple[str, ...]:
    """The keys of the dict `net(image, **forward_kwargs)` returns, in its order."""
    with torch.inference_mode():
        out = net(torch.zeros(1, 3, *_TRACE_HW), **forward_kwargs)
    if not isinstance(out, dict):
        raise TypeError(f"expected a network returning a dict, got {type(out).__name__}")
    return tuple(out)


def export_onnx_bytes(net: nn.Module, opset: int = 17, **forward_kwargs) -> bytes:
    """The ONNX graph of `net` (float32, CPU, eval mode) as bytes; `forward_kwargs` go to
    `net.forward` (e.g. SAMFeat's `dense_descriptors=False`: the graph the extractor's onnx
    backend runs for unit descriptors)."""
    net = copy.deepcopy(net).float().cpu().eval().to(memory_format=torch.contiguous_format)
    keys = output_keys(net, forward_kwargs)
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({k: {0: "batch", 2: f"{k}_height", 3: f"{k}_width"} for k in keys})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter warns about traced shape arithmetic and its own
        # deprecation; the export is checked against torch by the tests.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TupleOutputs(net, keys, forward_kwargs),
            (torch.zeros(1, 3, *_TRACE_HW),),
            buffer,
            input_names=["image"],
            output_names=list(keys),
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buffer.getvalue()


def export_onnx(extractor_name_or_net, output_path: str | Path, opset: int = 17,
                weights: str | None = None) -> Path:
    """Export a network to an ONNX file with dynamic batch, height and width.

    Args:
        extractor_name_or_net: a registered extractor name (e.g. "samfeat-lite", loaded with
            `weights` or its shipped weights), an extractor with a `.net`, or an `nn.Module`
            returning a dict of tensors.
        output_path: the .onnx file to write (folders are created).
        opset: ONNX opset version.
        weights: weights file for an extractor name ("" or None: the shipped file).
    Returns:
        the written path.
    """
    target = extractor_name_or_net
    if isinstance(target, str):
        from ..config import build

        conf = {"weights": weights} if weights else {}
        target = build("extractor", target, **conf)
    elif weights:
        raise ValueError("weights= only applies to an extractor name")
    net = getattr(target, "net", target)
    if not isinstance(net, nn.Module):
        raise TypeError(f"{type(target).__name__} has no network to export")
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_bytes(export_onnx_bytes(net, opset))
    logger.info("wrote %s", output_path)
    return output_path


def compile_aoti_package(net: nn.Module, example: torch.Tensor, path: str | Path,
                         **forward_kwargs) -> tuple[str, ...]:
    """Compile `net` for inputs shaped like `example` with AOTInductor into a package file.

    Static shapes, frozen weights (inductor prepacks the oneDNN convolutions and fuses their
    activations), the network's dtype and memory layout as they are. The file is written
    atomically, so concurrent processes never load half a package. Needs a C++ compiler.

    Returns:
        the output keys, in the order of the compiled model's outputs (`load_aoti_package`).
    """
    from torch._inductor import aoti_compile_and_package
    from torch._inductor import config as inductor_config

    keys = output_keys(net, forward_kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}{path.suffix}")
    with torch.no_grad():
        program = torch.export.export(_TupleOutputs(net, keys, forward_kwargs), (example,))
        with inductor_config.patch(freezing=True):
            aoti_compile_and_package(program, package_path=str(tmp))
    os.replace(tmp, path)
    return keys


def load_aoti_package(path: str | Path):
    """The compiled model of a `compile_aoti_package` file: called with the image tensor, it
    returns the outputs as a tuple.

    Loads with torch's C++ package loader: `torch._inductor.aoti_load_package` would first import
    inductor, 2-3 s of a process's first image on the 2-core CPU. Torch builds without that
    loader go through inductor's."""
    loader_class = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_class is None:
        from torch._inductor import aoti_load_package

        return aoti_load_package(str(path))
    # (package, model name, run single-threaded, number of runners, device index)
    loader = loader_class(str(path), "model", False, 1, -1)
    return lambda image: tuple(loader.run([image]))
