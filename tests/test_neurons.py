"""PLIF step against spikingjelly's ParametricLIFNode with the ATan surrogate."""

from __future__ import annotations

import pytest
import torch

from spikeseg.snn.neurons import PLIF


@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("init_tau", [2.0, 3.5])
def test_plif_matches_spikingjelly_over_a_sequence(detach_reset: bool, init_tau: float) -> None:
    from spikingjelly.activation_based import neuron, surrogate

    torch.manual_seed(0)
    T, shape = 12, (3, 5, 7)
    x = (torch.randn(T, *shape) * 1.5 + 0.6).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)

    ref = neuron.ParametricLIFNode(init_tau=init_tau, decay_input=True, v_threshold=1.0, v_reset=0.0,
                                   surrogate_function=surrogate.ATan(), detach_reset=detach_reset,
                                   step_mode="s")
    ours = PLIF(init_tau=init_tau, detach_reset=detach_reset)
    assert torch.allclose(ours.w, ref.w)

    v = torch.zeros(shape)
    spikes, vs, spikes_ref, vs_ref = [], [], [], []
    for t in range(T):
        s, v = ours(x[t], v)
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


def test_leaky_zero_matches_snntorch_step_by_step() -> None:
    """``--neuron snntorch-leaky`` is snnTorch's own Leaky (reset to zero, learnable beta):
    same spikes, membranes, and input and beta gradients over a sequence."""
    import snntorch
    from snntorch import surrogate

    from spikeseg.snn.neurons import LeakyZero

    torch.manual_seed(0)
    T, shape = 12, (3, 5, 7)
    x = (torch.randn(T, *shape) * 1.2 + 0.4).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = snntorch.Leaky(beta=0.5, threshold=1.0, spike_grad=surrogate.atan(), reset_mechanism="zero",
                         learn_beta=True)
    ours = LeakyZero(beta=0.5)
    v, mem = torch.zeros(shape), torch.zeros(shape)
    spikes, vs, spikes_ref, vs_ref = [], [], [], []
    for t in range(T):
        s, v = ours(x[t], v)
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
        s, v = plif(x, v)
        h = v_ref + (x - v_ref) / init_tau
        s_ref = (h >= 1.0).float()
        v_ref = h * (1 - s_ref)
        assert torch.equal(s, s_ref)
        torch.testing.assert_close(v, v_ref, atol=1e-6, rtol=0)
        fired += int(s.sum())
    assert 0 < fired < 240
