"""Training on a CUDA GPU: device choice, one update against the CPU's, mixed precision, resume
across devices, torchrun with NCCL and gloo, and the memory of one FPTT update at the paper's
widths. Marked ``gpu`` and skipped without CUDA; ``make gpu-check`` runs them on a GPU machine.

The helpers run on the CPU too (the tests at the end, not marked), so the GPU tests cannot rot
between the sessions that are lent a GPU.

Tolerances (fp32, TF32 off): the loss to 1e-5 relative; each gradient tensor to 1e-3 of its
norm for the twin and 1e-2 for the SNN (a membrane within rounding of its threshold may fire on
one device and not the other); after one Adam step at most 0.1 % (twin) or 1 % (SNN) of the
weights may differ by more than 1e-6 (Adam's first step moves every weight by about the learning
rate in the sign of its gradient, so a gradient within rounding of 0 may flip). A run resumed
across devices matches an uninterrupted GPU run to 5 % of each weight tensor's norm after 3
epochs (different kernels round differently; resuming on one device is exact,
tests/training/test_training.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from spikeseg.snn.models import ModelConfig, build_model
from spikeseg.training.devices import BACKEND_ENV, amp_dtype, resolve_device
from spikeseg.training.fptt import FPTT
from spikeseg.training.losses import bce_dice_loss
from tests.helpers import REPO, run_cli

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU here (make gpu-check runs these on one)")
#: where the GPU check collects figures measured inside tests (peak memory)
OUT_ENV = "SPIKESEG_GPU_OUT"


def batch(seed: int = 0, b: int = 2, k: int = 4, hw: tuple[int, int] = (48, 40)) -> tuple[torch.Tensor, torch.Tensor]:
    """A window of ``k`` slices of ``b`` sequences: inputs in [0, 1], overlapping region targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, k, 4, *hw, generator=g)
    y = (torch.rand(b, k, 3, *hw, generator=g) < 0.2).float()
    y[:, :, 1] = torch.maximum(y[:, :, 1], y[:, :, 0])  # ET inside TC inside WT
    y[:, :, 2] = torch.maximum(y[:, :, 2], y[:, :, 1])
    return x, y


def fresh_model(arch: str, preset: str = "tiny", seed: int = 0) -> torch.nn.Module:
    """Built on the CPU from a seed (the same weights whatever device it then moves to), without
    dropout (the devices' random streams differ)."""
    torch.manual_seed(seed)
    return build_model(ModelConfig.preset(arch, preset, dropout=0.0))


def one_update(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device | str,
               amp: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None,
               opt: torch.optim.Optimizer | None = None, fptt: FPTT | None = None,
               ) -> tuple[float, dict[str, torch.Tensor], torch.optim.Optimizer, FPTT | None]:
    """One update as the trainer makes it (FPTT for the SNN, plain Adam for the twin, clip 0.3):
    (loss, gradients on the CPU, the optimiser, the FPTT state) for the next call."""
    device = torch.device(device)
    model.to(device).train()
    if opt is None:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
        fptt = FPTT(model.parameters(), opt, 0.1) if model.stateful else None
    x, y = x.to(device), y.to(device)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits, _ = model(x)
        loss = bce_dice_loss(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler else loss).backward()
    grads = {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}
    if fptt is not None:
        fptt.step(0.3, scaler)
    else:
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.3)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
    return float(loss.detach()), grads, opt, fptt


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, p in model.named_parameters()}


def compare_updates(arch: str, device_a: str, device_b: str) -> None:
    """The same update on two devices agrees within the module's stated tolerances."""
    x, y = batch()
    results = []
    for device in (device_a, device_b):
        model = fresh_model(arch)
        loss, grads, _, _ = one_update(model, x, y, device)
        results.append((loss, grads, weights(model)))
    (la, ga, wa), (lb, gb, wb) = results
    grad_tol, weight_share = (1e-2, 1e-2) if arch == "spiking-useg" else (1e-3, 1e-3)
    assert la == pytest.approx(lb, rel=1e-5)
    for n in ga:
        scale = float(ga[n].norm())
        if scale > 0:
            assert float((ga[n] - gb[n]).norm()) <= grad_tol * scale, n
    far = sum(int(((wa[n] - wb[n]).abs() > 1e-6).sum()) for n in wa)
    assert far <= weight_share * sum(t.numel() for t in wa.values()), f"{far} weights differ by more than 1e-6"


def loss_falls_under_amp(dtype: torch.dtype, device: str, steps: int = 20) -> list[float]:
    """``steps`` updates of the SNN on one fixed batch under autocast; every loss finite."""
    model = fresh_model("spiking-useg")
    scaler = torch.amp.GradScaler(torch.device(device).type) if dtype == torch.float16 else None
    x, y = batch(1)
    opt = fptt = None
    losses = []
    for _ in range(steps):
        loss, _, opt, fptt = one_update(model, x, y, device, dtype, scaler, opt, fptt)
        losses.append(loss)
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    if scaler is not None:
        assert scaler.get_scale() > 0
    return losses


@pytest.fixture()
def no_tf32():
    """fp32 means fp32: Ampere and later GPUs round convolutions to TF32 unless told not to."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--arch", "useg", "--view", "axial", "--preset", "tiny",
            "--spacing", "6", "--batch-size", "2", "--quiet", "--no-amp", "--augment", "none", *extra]


# -- on a GPU ------------------------------------------------------------------------------------

@gpu
@needs_cuda
def test_auto_picks_the_gpu_and_bf16_where_it_has_it() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert amp_dtype(device, True) == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    assert amp_dtype(device, False) is None and amp_dtype(torch.device("cpu"), True) is None


@gpu
@needs_cuda
@pytest.mark.parametrize("arch", ["spiking-useg", "useg"])
def test_one_update_on_the_gpu_matches_the_cpu(arch: str, no_tf32) -> None:
    compare_updates(arch, "cpu", "cuda")


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16-scaler"])
def test_mixed_precision_steps_are_finite_and_the_loss_falls(dtype: torch.dtype) -> None:
    loss_falls_under_amp(dtype, "cuda")


@gpu
@needs_cuda
def test_saved_on_the_gpu_resumed_on_the_cpu_and_back_matches_an_uninterrupted_run(phantom5: Path,
                                                                                  tmp_path: Path) -> None:
    ref, hop = tmp_path / "ref", tmp_path / "hop"
    assert run_cli(*_train_args(phantom5, ref, "--device", "cuda", "--epochs", "3")).returncode == 0
    for device, epochs in (("cuda", "1"), ("cpu", "2"), ("cuda", "3")):
        r = run_cli(*_train_args(phantom5, hop, "--device", device, "--epochs", epochs, "--resume"))
        assert r.returncode == 0, r.stderr[-2000:]
    a = torch.load(ref / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    b = torch.load(hop / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert b["epoch"] == 3 and len(b["history"]) == 3
    for k, t in a["model"].items():
        if t.is_floating_point() and float(t.norm()) > 0:
            assert float((t - b["model"][k]).norm()) <= 0.05 * float(t.norm()), k


@gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_torchrun_one_process_runs_ddp_for_two_epochs(phantom5: Path, tmp_path: Path, backend: str) -> None:
    run = torchrun_train(phantom5, tmp_path / backend, backend, "cuda")
    assert json.loads((run / "config.json").read_text())["dist_backend"] == backend


@gpu
@needs_cuda
def test_peak_memory_of_one_fptt_update_at_the_paper_preset() -> None:
    """The paper's widths (64-512), its batch of 8, a window of 8 slices of the 2 mm axial grid
    (80 x 96): recorded for the GPU check's table."""
    device = torch.device("cuda")
    model = fresh_model("spiking-useg", "paper")
    x, y = batch(2, b=8, k=8, hw=(80, 96))
    torch.cuda.reset_peak_memory_stats(device)
    loss, _, _, _ = one_update(model, x, y, device, amp_dtype(device, True))
    peak = torch.cuda.max_memory_allocated(device) / 2**20
    total = torch.cuda.get_device_properties(device).total_memory / 2**20
    assert 0 < peak < total and loss == loss
    if os.environ.get(OUT_ENV):
        Path(os.environ[OUT_ENV]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ[OUT_ENV]) / "fptt_memory.json").write_text(json.dumps(
            {"preset": "paper", "batch": 8, "window_slices": 8, "slice": [80, 96], "amp": str(amp_dtype(device, True)),
             "peak_mb": round(peak, 1), "gpu": torch.cuda.get_device_name(device)}) + "\n")


# -- the same helpers on the CPU: they cannot rot between GPU sessions ----------------------------

def torchrun_train(data: Path, out: Path, backend: str, device: str) -> Path:
    """``torchrun --nproc_per_node 1`` training two epochs with the given process-group backend."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", BACKEND_ENV: backend}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "-m", "spikeseg.cli", *_train_args(data, out, "--device", device, "--epochs", "2")]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 1 and json.loads((out / "summary.json").read_text())["epochs_run"] == 2
    return out


def test_the_update_comparison_runs_on_the_cpu() -> None:
    compare_updates("spiking-useg", "cpu", "cpu")


def test_torchrun_with_one_process_starts_the_process_group(phantom5: Path, tmp_path: Path) -> None:
    """What the NCCL test checks on a GPU, with gloo on the CPU: one process under torchrun runs
    the DistributedDataParallel path and records its backend."""
    run = torchrun_train(phantom5, tmp_path / "gloo", "gloo", "cpu")
    assert json.loads((run / "config.json").read_text())["dist_backend"] == "gloo"
