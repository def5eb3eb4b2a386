"""Training checkpoints: atomic writes, keep-last-k, exact resume.

A checkpoint `ckpt_<step>.pt` holds the model, optimizer, scheduler and grad-scaler states, the
step, the epoch and the batch position inside it, the RNG states of every rank (python, numpy,
torch, cuda), the resolved config and the git commit. It is written to `<name>.tmp` and moved
into place with `os.replace`, so a crash leaves either the old or the new file, never a partial
one; leftover `.tmp` files are ignored.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

PREFIX, SUFFIX = "ckpt_", ".pt"


def git_commit() -> str:
    """Commit hash of the featloc source tree, or 'unknown'."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir()
             if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX)]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):-len(SUFFIX)]))


def save(directory: str | Path, state: dict, keep_last_k: int = 0) -> Path:
    """Atomically write `state` as ckpt_<step>.pt; keep only the newest `keep_last_k` (0: all)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PREFIX}{state['step']:08d}{SUFFIX}"
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if keep_last_k > 0:
        for old in checkpoints(directory)[:-keep_last_k]:
            old.unlink(missing_ok=True)
    return path


def load_latest(directory: str | Path, map_location="cpu") -> tuple[dict, Path] | None:
    """The newest readable checkpoint (an unreadable one is skipped with a warning)."""
    for path in reversed(checkpoints(directory)):
        try:
            return torch.load(path, map_location=map_location, weights_only=False), path
        except Exception as exc:  # noqa: BLE001 - fall back to the previous checkpoint
            logger.warning("cannot read checkpoint %s (%s); trying an older one", path, exc)
    return None


def load_model_state(source: str | Path, map_location="cpu") -> tuple[dict, Path]:
    """Model parameters to fine-tune from: a checkpoint file, a run folder's newest
    checkpoint, or exported inference weights (`{"net_conf", "state_dict"}`, e.g. a shipped
    featloc/weights/*.pt; fp16 values come back as float32). Returns (state_dict, path)."""
    source = Path(source)
    if source.is_dir():
        found = load_latest(source, map_location)
        if found is None:
            raise FileNotFoundError(f"train.init_from: no checkpoint in {source}")
        ckpt, path = found
    elif source.is_file():
        ckpt, path = torch.load(source, map_location=map_location, weights_only=False), source
    else:
        raise FileNotFoundError(f"train.init_from: {source} does not exist")
    if isinstance(ckpt, dict) and "model" not in ckpt and ckpt.get("state_dict"):
        # exported weights: stored in fp16 to stay small, trained on in float32
        return {k: v.float() if v.is_floating_point() else v
                for k, v in ckpt["state_dict"].items()}, path
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"train.init_from: {path} is neither a training checkpoint (ckpt_<step>.pt "
                         "of `featloc train`) nor exported weights")
    return ckpt["model"], path
