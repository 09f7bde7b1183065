"""Models: shapes, step == sequence, state, and operation counts against NeuroBench."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from snn.models import ARCHS, ActivationTap, ModelConfig, build_model


def _model(arch: str, widths=(4, 8, 16), seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch=arch, widths=widths, dropout=0.0)).eval()


def _spiky_input(b=2, t=5, h=22, w=18, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, t, 4, h, w, generator=g)
    x[..., :3, :] = 0  # zero background rows, like a skull-stripped slice
    return x * 3


@pytest.mark.parametrize("arch", ARCHS)
def test_step_by_step_equals_sequence_and_state_shapes(arch: str) -> None:
    model = _model(arch)
    x = _spiky_input()
    with torch.no_grad():
        logits, final = model(x)
        assert logits.shape == (2, 5, 3, 22, 18)
        state = model.init_state(2, 22, 18)
        specs = model.state_specs(22, 18)
        assert [tuple(s.shape[1:]) for s in state] == [shape for _, shape in specs]
        for t in range(5):
            out, state = model.step(x[:, t], state)
            torch.testing.assert_close(out, logits[:, t])
        for a, b in zip(state, final):
            torch.testing.assert_close(a, b)
    assert model.stateful == (arch != "useg")


def test_state_carries_context_and_ablation_removes_it() -> None:
    model = _model("spiking-useg")
    x = _spiky_input()
    with torch.no_grad():
        full, _ = model(x)
        reset, _ = model(x, reset_every_step=True)
        alone = torch.stack([model(x[:, t:t + 1])[0][:, 0] for t in range(5)], 1)
    torch.testing.assert_close(reset, alone)
    assert not torch.allclose(full[:, 1:], reset[:, 1:])
    torch.testing.assert_close(full[:, 0], reset[:, 0])


def test_presets_and_config_round_trip() -> None:
    cfg = ModelConfig.preset("spiking-useg", "paper")
    assert cfg.widths == (64, 128, 256, 512)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelConfig(arch="transformer", widths=(4,))


def _count(model, x):
    model.count_ops = True
    state = model.init_state(x.shape[0], *x.shape[-2:])
    ops_total = None
    acts_total = None
    with torch.no_grad():
        for t in range(x.shape[1]):
            _, state, ops, acts = model.step(x[:, t], state)
            ops_total = [o.sum() for o in ops] if ops_total is None else [a + o.sum() for a, o in zip(ops_total, ops)]
            acts_total = [a.sum() for a in acts] if acts_total is None else [a + o.sum() for a, o in zip(acts_total, acts)]
    model.count_ops = False
    return ops_total, acts_total


@pytest.mark.parametrize("arch", ["spiking-useg", "useg"])
def test_synaptic_operations_and_sparsity_match_neurobench(arch: str) -> None:
    from neurobench.metrics.workload import ActivationSparsity, SynapticOperations
    from neurobench.models import TorchModel

    model = _model(arch)
    x = _spiky_input()
    ops, acts = _count(model, x)
    layers = model.connection_layers()

    nb = TorchModel(model)
    nb.add_activation_module(ActivationTap)
    nb.register_hooks()
    with torch.no_grad():
        preds, _ = model(x)
    syn = SynapticOperations()(nb, preds, (x, None))
    sparsity = ActivationSparsity()(nb, preds, (x, None))
    nb.close_hooks()

    # NeuroBench hooks nn.Conv2d (not ConvTranspose2d): compare over the same layers.
    conv = [(spk, o) for (_, layer, spk), o in zip(layers, ops) if isinstance(layer, nn.Conv2d)]
    ours_mac = sum(float(o) for spk, o in conv if not spk) / x.shape[0]
    ours_ac = sum(float(o) for spk, o in conv if spk) / x.shape[0]
    assert ours_mac == pytest.approx(syn["Effective_MACs"], rel=0.01)
    assert ours_ac == pytest.approx(syn["Effective_ACs"], rel=0.01)
    if arch == "spiking-useg":
        assert ours_ac > 0 and syn["Effective_ACs"] > 0
    else:
        assert ours_ac == 0 == syn["Effective_ACs"]

    shapes = [spec[1] for spec in model.state_specs(22, 18)] if arch == "spiking-useg" else None
    if shapes is not None:
        numel = sum(c * h * w for c, h, w in shapes) * x.shape[0] * x.shape[1]
        ours_sparsity = 1 - sum(float(a) for a in acts) / numel
        assert ours_sparsity == pytest.approx(sparsity, rel=0.01)


def test_deconvolution_ops_match_a_binary_copy_of_the_layer() -> None:
    """NeuroBench's definition, sum(binary_layer(x != 0)), applied to the layer it skips."""
    from snn.models import effective_ops
    layer = nn.ConvTranspose2d(6, 3, 2, stride=2)
    x = (torch.rand(2, 6, 5, 7) > 0.7).float()
    ref = copy.deepcopy(layer)
    with torch.no_grad():
        ref.weight.fill_(1.0)
        ref.bias.zero_()
        expect = ref((x != 0).float()).sum(dim=(1, 2, 3))
    torch.testing.assert_close(effective_ops(layer, x), expect)
