"""Where training runs: device choice, mixed precision, processes (torchrun / DDP), seeds."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch.distributed as dist

from spikeseg.runtime.errors import InputError

def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise InputError(None, "--device cuda but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device(spec)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """Mixed precision only on CUDA: bf16 where the GPU has it, else fp16 with a GradScaler."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
