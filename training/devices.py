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


#: Environment variable that picks the process group's backend under torchrun (``nccl`` or
#: ``gloo``); by default NCCL where CUDA is visible, else gloo.
BACKEND_ENV = "SPIKESEG_DIST_BACKEND"


def init_distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank). Under torchrun (which sets ``WORLD_SIZE`` and ``RANK``) the
    process group is started even for one process, so ``torchrun --nproc_per_node 1`` runs the
    very DistributedDataParallel path a multi-GPU run takes (the GPU check's NCCL test)."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = os.environ.get(BACKEND_ENV) or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend not in ("nccl", "gloo"):
            raise InputError(None, f"{BACKEND_ENV}={backend!r}: expected nccl or gloo")
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def distributed_backend() -> str | None:
    """The process group's backend, or None when this is one plain process."""
    return str(dist.get_backend()) if dist.is_initialized() else None


def seed_everything(seed: int) -> np.random.Generator:
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def params_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
