"""The conversion-aware twin (``--twin-activation qcfs``): the activation against the published
formula and its reference implementation, the level fit, a lossless conversion, and the chain
train -> convert -> export -> segment."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeseg.snn.models import ModelConfig, build_model
from spikeseg.snn.qcfs import QCFS, fit_level, own_state_keys, qcfs_layers
from spikeseg.training.conversion import FACTORS
from tests.conftest import TRAIN
from tests.helpers import run_cli


class GradFloor(torch.autograd.Function):
    """The QCFS authors' straight-through floor (github.com/putshua/SNN_conversion_QCFS, modules.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.floor()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def reference_qcfs(x: torch.Tensor, up: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """The authors' ``IF.forward`` for t = L quantisation steps (their ``up`` is lambda)."""
    x = x / up
    x = GradFloor.apply(x * levels + 0.5) / levels
    return torch.clamp(x, 0, 1) * up


def test_qcfs_is_a_relu_until_active_then_the_authors_one_step_activation() -> None:
    torch.manual_seed(0)
    x = torch.randn(4000) * 2
    act = QCFS(level=1.7)
    torch.testing.assert_close(act(x), torch.relu(x))
    act.active = True
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    up = torch.tensor(1.7, requires_grad=True)
    g = torch.randn(4000)
    (act(xa) * g).sum().backward()
    (reference_qcfs(xb, up) * g).sum().backward()
    out = act(x).detach()
    torch.testing.assert_close(out, 1.7 * (x >= 0.85).float())  # the step at lambda / 2, output lambda
    act.set_mix(0.25)  # ramping in: a quarter of the way from the ReLU to the step
    torch.testing.assert_close(act(x).detach(), torch.relu(x) + 0.25 * (out - torch.relu(x)))
    act.set_mix(1.0)
    act.threshold_share.fill_(0.375)  # the step moved, the output still lambda
    torch.testing.assert_close(act(x).detach(), 1.7 * (x >= 0.375 * 1.7).float())
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(act.level.grad, up.grad)
    assert 0 < int((xa.grad != 0).sum()) < x.numel()  # the clip stops the gradient outside it


def test_the_active_flag_travels_in_the_state_dict() -> None:
    twin = build_model(ModelConfig.preset("useg", "tiny", activation="qcfs"))
    for m in qcfs_layers(twin).values():
        m.active = True
    again = build_model(ModelConfig.preset("useg", "tiny", activation="qcfs"))
    again.load_state_dict(twin.state_dict())
    assert len(qcfs_layers(again)) == len(twin.cfg.widths) * 3 - 2
    assert all(m.active for m in qcfs_layers(again).values())
    with pytest.raises(ValueError, match="is a twin's"):
        ModelConfig.preset("spiking-useg", "tiny", activation="qcfs")


def test_level_fit_is_the_least_squares_step_of_a_relu() -> None:
    """Within 0.5 % of the best level found by trying twice every positive sample value."""
    y = np.random.default_rng(3).normal(size=3000)
    r = np.maximum(y, 0)

    def err(lam: float) -> float:
        return float(np.mean((r - lam * (y >= lam / 2)) ** 2))

    best = min(err(2 * v) for v in y[y > 0])
    assert err(fit_level(y)) <= best * 1.005
    assert fit_level(np.r_[-np.ones(10), 3 * np.ones(10)]) == pytest.approx(3.0)


def test_an_snn_converted_from_a_qcfs_twin_computes_the_twins_logits() -> None:
    """Reset every slice (no carried membrane) and at the exact threshold factor, the converted
    SNN is the QCFS twin: nothing is lost in conversion (a ReLU twin's SNN is not its twin)."""
    from spikeseg.training.conversion import balance, exact_factor, spiking_layers

    torch.manual_seed(0)
    twin = build_model(ModelConfig.preset("useg", "tiny", activation="qcfs", dropout=0.0)).eval()
    for i, m in enumerate(qcfs_layers(twin).values()):
        m.active = True
        m.level.data.fill_(0.4 + 0.1 * i)
    snn = build_model(ModelConfig.preset("spiking-useg", "tiny", dropout=0.0, init_tau=1.25))
    weights = {k: v for k, v in twin.state_dict().items() if not k.endswith(own_state_keys())}
    snn.load_state_dict(weights, strict=False)
    rng = np.random.default_rng(0)
    calibration = [(rng.random((4, 16, 24, 12), dtype=np.float32), rng.random((3, 16, 24, 12)) < 0.2)]
    conv = balance(snn, twin, calibration, "axial", factors=(), reset_every_step=True)
    assert conv["factor"] == exact_factor(next(iter(spiking_layers(snn).values()))) == pytest.approx(0.8)
    assert conv["scales"] == pytest.approx({k: float(m.level.detach()) for k, m in qcfs_layers(twin).items()})
    x = torch.from_numpy(rng.random((1, 6, 4, 32, 24), dtype=np.float32))
    with torch.no_grad():
        want, _ = twin(x)
        got, _ = snn.eval()(x, reset_every_step=True)
    assert float(want.std()) > 0.01
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_qcfs_twin_trains_converts_exports_and_segments(phantom5: Path, phantom_root: Path, tmp_path: Path) -> None:
    """The last half of the twin's epochs run QCFS with fitted levels, the step ramped in, and
    the best checkpoint comes from the step alone; the SNN converted from it takes the levels as its spike scales; the twin's
    bundle (a Floor in the graph), calibrated to INT8, segments without torch on both engines."""
    twin_run = tmp_path / "twin"
    r = run_cli("train", "--data", phantom5, "--out", twin_run, "--arch", "useg", *TRAIN, "--epochs", "4",
                "--twin-activation", "qcfs")
    assert r.returncode == 0, r.stderr
    best = torch.load(twin_run / "checkpoints" / "best.pt", weights_only=True)
    assert best["model_config"]["activation"] == "qcfs" and best["epoch"] == 4
    enabled = [float(v) for k, v in best["model"].items() if k.endswith("act.enabled")]
    assert enabled and all(e == 1.0 for e in enabled)
    levels = {k.removesuffix(".act.level"): float(v) for k, v in best["model"].items() if k.endswith(".act.level")}
    assert all(v > 0 and v != 1.0 for v in levels.values())  # fitted, not the initial 1
    assert all(float(v) == 1.0 for k, v in best["model"].items() if k.endswith("act.mix"))  # the step alone
    shares = {float(v) for k, v in best["model"].items() if k.endswith("act.threshold_share")}
    assert len(shares) == 1 and shares <= {0.5 * f for f in FACTORS}  # one step position, chosen by NLL
    share = shares.pop()

    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "snn", "--arch", "spiking-useg", *TRAIN,
                "--epochs", "1", "--init-from", twin_run)
    assert r.returncode == 0, r.stderr
    conv = json.loads((tmp_path / "snn" / "config.json").read_text())["conversion"]
    assert conv["scales"] == pytest.approx(levels)
    assert conv["thresholds"] == pytest.approx({k: conv["factor"] * share * v for k, v in levels.items()})

    r = run_cli("export", twin_run, "--out", tmp_path / "bundle", "--int8", "--calib", phantom5, "--calib-items", "20",
                "--allow-accuracy-drop")
    assert r.returncode == 0, r.stderr
    case = sorted(phantom_root.iterdir())[0]
    for backend in ("onnxruntime", "openvino"):
        out = tmp_path / f"out-{backend}"
        r = run_cli("segment", tmp_path / "bundle", case, out, "--backend", backend, "--precision", "int8",
                    "--quiet", block_torch=True)
        assert r.returncode == 0, r.stderr
        assert (out / case.name / f"{case.name}_pred.nii.gz").is_file()


def test_qcfs_is_refused_where_it_means_nothing(phantom5: Path, tmp_path: Path) -> None:
    for arch, extra, message in (("spiking-useg", [], "is the useg twin's"),
                                 ("useg", ["--qcfs-share", "0"], "--qcfs-share must be in")):
        r = run_cli("train", "--data", phantom5, "--out", tmp_path / arch, "--arch", arch, *TRAIN,
                    "--twin-activation", "qcfs", *extra)
        assert r.returncode != 0 and message in r.stderr
        assert not (tmp_path / arch).exists()


def test_a_qcfs_twin_ends_in_its_qcfs_phase_whatever_stops_it(phantom5: Path, tmp_path: Path) -> None:
    """A budget spent inside the first epoch (--max-minutes) still leaves a QCFS epoch: the
    conversion reads the step, so a twin that never ran it would convert as a ReLU twin."""
    run = tmp_path / "twin"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "useg", *TRAIN, "--epochs", "50",
                "--max-minutes", "0.0001", "--twin-activation", "qcfs")
    assert r.returncode == 0, r.stderr
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == 2
    assert all(float(v) == 1.0 for k, v in best["model"].items() if k.endswith("act.enabled"))
