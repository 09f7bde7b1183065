"""PLIF step against spikingjelly's ParametricLIFNode with the ATan surrogate."""

from __future__ import annotations

import pytest
import torch

from spikeseg.snn.neurons import PLIF


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("init_tau", [2.0, 3.5])
def test_plif_matches_spikingjelly_over_a_sequence(detach_reset: bool, init_tau: float, reset: str) -> None:
    """Reset to zero is spikingjelly's v_reset=0; by subtraction (the paper's own equation) its
    soft reset, v_reset=None."""
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    T, shape = 12, (3, 5, 7)
    x = (torch.randn(T, *shape) * 1.5 + 0.6).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)

    ref = neuron.ParametricLIFNode(init_tau=init_tau, decay_input=True, v_threshold=1.0,
                                   v_reset=0.0 if reset == "zero" else None,
                                   surrogate_function=surrogate.ATan(), detach_reset=detach_reset,
                                   step_mode="s")
    ours = PLIF(init_tau=init_tau, detach_reset=detach_reset, reset=reset)
    assert torch.allclose(ours.w, ref.w)

    v = torch.zeros(shape)
    spikes, vs, spikes_ref, vs_ref = [], [], [], []
    for t in range(T):
        s, v, _ = ours(x[t], v)
        spikes.append(s)
        vs.append(v)
        spikes_ref.append(ref(x_ref[t]))
        vs_ref.append(ref.v)
    s, s_ref = torch.stack(spikes), torch.stack(spikes_ref)
    assert 0.05 < s.mean() < 0.95  # the test exercises both firing and silence
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(torch.stack(vs), torch.stack(vs_ref), atol=1e-6, rtol=0)

    g = torch.randn(T, *shape)
    gv = torch.randn(T, *shape)
    ((s * g).sum() + (torch.stack(vs) * gv).sum()).backward()
    ((s_ref * g).sum() + (torch.stack(vs_ref) * gv).sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.w.grad, ref.w.grad, atol=1e-6, rtol=1e-5)


def test_the_two_resets_follow_the_equation_and_differ_only_after_a_spike() -> None:
    """v' = h (1 - s) against v' = h - theta s, step by step, with a learned threshold of 0.8."""
    torch.manual_seed(1)
    x = torch.randn(10, 50) * 1.5 + 0.5
    zero, sub = PLIF(reset="zero", learn_threshold=True), PLIF(reset="subtract", learn_threshold=True)
    with torch.no_grad():
        zero.theta.fill_(0.8), sub.theta.fill_(0.8)
    vz = vs = torch.zeros(50)
    for t in range(10):
        hz, hs = vz + (x[t] - vz) / 2.0, vs + (x[t] - vs) / 2.0  # tau 2
        s_z, vz_new, _ = zero(x[t], vz)
        s_s, vs_new, _ = sub(x[t], vs)
        torch.testing.assert_close(s_z, (hz >= 0.8).float())
        torch.testing.assert_close(vz_new, hz * (1 - s_z), atol=1e-6, rtol=0)
        torch.testing.assert_close(vs_new, hs - 0.8 * s_s, atol=1e-6, rtol=0)
        vz, vs = vz_new.detach(), vs_new.detach()
    assert (vs > 0).any() and not torch.equal(vz, vs)  # the residual is kept only by subtraction
    with pytest.raises(ValueError, match="reset"):
        PLIF(reset="half")


def test_tau_floor() -> None:
    n = PLIF(init_tau=3.0, tau_min=1.5)
    assert n.tau == pytest.approx(3.0)
    with torch.no_grad():
        n.w.fill_(50.0)
    assert n.tau == pytest.approx(1.5, abs=1e-6)


def test_surrogate_is_the_papers_arctan() -> None:
    """d/dx [arctan(pi x)/pi + 1/2] = 1 / (1 + (pi x)^2)."""
    from spikeseg.snn.neurons import ATanSpike
    x = torch.linspace(-2, 2, 41, requires_grad=True)
    ATanSpike.apply(x).sum().backward()
    xs = x.detach().clone().requires_grad_(True)
    (torch.atan(torch.pi * xs) / torch.pi + 0.5).sum().backward()
    torch.testing.assert_close(x.grad, xs.grad)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_leaky_zero_matches_snntorch_step_by_step(reset: str) -> None:
    """``--neuron snntorch-leaky`` is snnTorch's own Leaky (learnable beta), reset to zero or by
    subtraction: same spikes, membranes, and input and beta gradients over a sequence."""
    import snntorch
    from snntorch import surrogate

    from spikeseg.snn.neurons import LeakyZero

    torch.manual_seed(0)
    T, shape = 12, (3, 5, 7)
    x = (torch.randn(T, *shape) * 1.2 + 0.4).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = snntorch.Leaky(beta=0.5, threshold=1.0, spike_grad=surrogate.atan(), reset_mechanism=reset,
                         learn_beta=True)
    ours = LeakyZero(beta=0.5, reset=reset)
    v, mem = torch.zeros(shape), torch.zeros(shape)
    spikes, vs, spikes_ref, vs_ref = [], [], [], []
    for t in range(T):
        s, v, _ = ours(x[t], v)
        s_ref, mem = ref(x_ref[t], mem)
        spikes.append(s), vs.append(v), spikes_ref.append(s_ref), vs_ref.append(mem)
    s, s_ref = torch.stack(spikes), torch.stack(spikes_ref)
    assert 0.05 < s.mean() < 0.95
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(torch.stack(vs), torch.stack(vs_ref), atol=1e-6, rtol=0)
    g, gv = torch.randn(T, *shape), torch.randn(T, *shape)
    ((s * g).sum() + (torch.stack(vs) * gv).sum()).backward()
    ((s_ref * g).sum() + (torch.stack(vs_ref) * gv).sum()).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.beta.grad, ref.beta.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("init_tau,tau_min", [(3.0, 1.5), (2.5, 2.0)])
def test_plif_with_a_tau_floor_follows_the_equation_step_by_step(init_tau: float, tau_min: float) -> None:
    """With ``tau_min`` > 1, 1/tau = sigmoid(w) / tau_min starts at exactly 1/init_tau: the
    expected values use ``init_tau`` itself, never the module's own tau, so an update that
    drops ``tau_min`` (1/tau = sigmoid(w)) fails here."""
    torch.manual_seed(1)
    plif = PLIF(init_tau=init_tau, tau_min=tau_min)
    assert plif.tau == pytest.approx(init_tau)
    v = torch.zeros(4, 6)
    v_ref = torch.zeros(4, 6)
    fired = 0
    for _ in range(10):
        x = torch.randn(4, 6) * 2 + 1.5
        s, v, _ = plif(x, v)
        h = v_ref + (x - v_ref) / init_tau
        s_ref = (h >= 1.0).float()
        v_ref = h * (1 - s_ref)
        assert torch.equal(s, s_ref)
        torch.testing.assert_close(v, v_ref, atol=1e-6, rtol=0)
        fired += int(s.sum())
    assert 0 < fired < 240


@pytest.mark.parametrize("neuron", ["plif", "snntorch-leaky"])
def test_a_subtract_reset_model_exports_and_its_step_graph_agrees_with_torch(neuron: str, tmp_path) -> None:
    """The reset mode travels in the model config to the exported step graph: ONNX Runtime,
    fed torch's state at every step, gives torch's spikes' membranes and logits."""
    import numpy as np
    import onnxruntime as ort

    from spikeseg.export.graphs import export_onnx
    from spikeseg.snn.models import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig.preset("spiking-useg", "tiny", neuron=neuron, reset="subtract", norm_gain=2.0)
    assert ModelConfig.from_dict(cfg.to_dict()).reset == "subtract"
    model = build_model(cfg).eval()
    assert {m.reset_mode for m in model.modules() if hasattr(m, "reset_mode")} == {"subtract"}
    h = w = 32
    spec = export_onnx(model, h, w, tmp_path / "step.onnx")
    assert not model.training  # exporting once left the caller's model in training mode (dropout on)
    sess = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    state = model.init_state(1, h, w)
    residual = False
    with torch.no_grad():
        for _ in range(6):
            x = torch.randn(1, 4, h, w) * 2
            out = sess.run(None, {"x": x.numpy(), **{s.input: st.numpy() for s, st in zip(spec.states, state)}})
            named = dict(zip([o.name for o in sess.get_outputs()], out))
            step = model.step_counted(x, state)
            np.testing.assert_allclose(named["logits"], step.logits.numpy(), atol=1e-4, rtol=0)
            for s, st in zip(spec.states, step.state):
                np.testing.assert_allclose(named[s.output], st.numpy(), atol=1e-4, rtol=0)
            residual |= any(bool((st.abs() > 1e-3).any()) for st in step.state)
            state = step.state
    assert residual  # membranes carry charge from step to step


def test_reset_is_for_spiking_models_only(tmp_path) -> None:
    from spikeseg.training.config import TrainConfig
    from spikeseg.training.trainer import build_view_model
    from spikeseg.runtime.errors import InputError

    cfg = TrainConfig.for_arch(data=str(tmp_path), out=str(tmp_path / "r"), arch="useg", view="axial",
                               reset="subtract")
    with pytest.raises(InputError, match="--reset subtract"):
        build_view_model(cfg, [], torch.device("cpu"))


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_a_step_returns_the_potential_before_its_reset_and_keeps_nothing(reset: str) -> None:
    """charge -> fire -> reset: the potential is the charge (v + (x - v) / tau), the membrane
    what the reset leaves of it; the module holds no state between calls."""
    torch.manual_seed(1)
    n = PLIF(init_tau=2.0, reset=reset)
    x, v = torch.randn(200) * 2 + 1, torch.rand(200)
    before = {k for k, val in vars(n).items() if isinstance(val, torch.Tensor)}
    with torch.no_grad():
        step = n(x, v)
    torch.testing.assert_close(step.potential, v + (x - v) / 2.0)
    torch.testing.assert_close(step.spikes, (step.potential >= 1.0).float())
    left = step.potential * (1 - step.spikes) if reset == "zero" else step.potential - step.spikes
    torch.testing.assert_close(step.membrane, left)
    assert 0 < float(step.spikes.mean()) < 1
    assert {k for k, val in vars(n).items() if isinstance(val, torch.Tensor)} == before
