"""The SNN training recipe's pieces, each against an independent reference (formula or autograd)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeseg.snn.models import ModelConfig, build_model, tdbn_gain
from spikeseg.snn.neurons import PLIF, ATanSpike
from tests.conftest import TRAIN
from tests.helpers import REPO, run_cli

#: the shipped recipes read as plain JSON, apart from the typed reader under test
RECIPES = json.loads((REPO / "training" / "recipes.json").read_text())
SNN_RECIPE = RECIPES["recipes"]["spiking-useg"]["settings"]
CONVERTED = RECIPES["recipes"]["converted-snn"]["settings"]


def test_surrogate_width_is_the_derivative_of_a_wider_arctan() -> None:
    """d/dx [(w/pi) arctan(pi x / w)] = 1 / (1 + (pi x / w)^2): peak 1, width w."""
    for width in (0.5, 1.0, 3.0):
        x = torch.linspace(-3, 3, 61, requires_grad=True)
        ATanSpike.apply(x, width).sum().backward()
        xs = x.detach().clone().requires_grad_(True)
        (width / math.pi * torch.atan(math.pi * xs / width)).sum().backward()
        torch.testing.assert_close(x.grad, xs.grad)


def test_learnable_threshold_gradient_matches_the_surrogate_formula() -> None:
    """dL/dtheta = -sum(dL/ds * sg(h - theta)) on one step from rest (no reset path in play)."""
    torch.manual_seed(0)
    n = PLIF(init_tau=2.0, v_threshold=0.8, learn_threshold=True)
    x = torch.randn(64) * 2
    g = torch.randn(64)
    s, *_ = n(x, torch.zeros(64))
    (s * g).sum().backward()
    h = x / 2.0
    expected = -(g / (1 + (math.pi * (h - 0.8)) ** 2)).sum()
    torch.testing.assert_close(n.theta.grad, expected)
    fixed = PLIF(init_tau=2.0)
    assert not fixed.theta.requires_grad


def test_tdbn_gain_puts_the_first_charge_at_threshold_scale() -> None:
    """With gain = V_th * tau, the first slice's charge x / tau has unit std (tdBN, alpha = 1),
    and ~16 % of neurons fire (P(z > 1)) instead of ~2.3 % (P(z > 2)) at gain 1."""
    torch.manual_seed(0)
    assert tdbn_gain(2.0) == 2.0
    rates = {}
    for gain in (1.0, tdbn_gain(2.0)):
        model = build_model(ModelConfig(arch="spiking-useg", widths=(16, 32), dropout=0.0, norm_gain=gain))
        layer = model.down[0].act
        layer.record = True
        charges = []
        model.down[0].norm.register_forward_hook(lambda m, i, o: charges.append(o / 2.0))
        with torch.no_grad():
            model.step(torch.randn(8, 4, 32, 32), model.init_state(8, 32, 32))
        rates[gain] = float(layer.stats[0][0])
        if gain != 1.0:
            assert float(charges[0].std()) == pytest.approx(1.0, abs=0.05)
    assert rates[1.0] == pytest.approx(0.023, abs=0.01) and rates[2.0] == pytest.approx(0.159, abs=0.03)


def test_warm_start_copies_every_twin_weight_and_refuses_a_mismatch(phantom5: Path, tmp_path: Path) -> None:
    from spikeseg.training.run_folder import load_run
    from spikeseg.training.trainer import warm_start

    twin_run = tmp_path / "twin"
    r = run_cli("train", "--data", phantom5, "--out", twin_run, "--arch", "useg", *TRAIN[:6], "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    twin, _, _ = load_run(twin_run)
    snn = build_model(ModelConfig.preset("spiking-useg", "tiny"))
    warm_start(snn, twin_run)
    t = twin.state_dict()
    for k, v in snn.state_dict().items():
        if k.endswith((".act.w", ".act.theta")):
            continue
        assert torch.equal(v, t[k]), k
    from spikeseg.runtime.errors import InputError
    with pytest.raises(InputError, match="cannot warm-start"):
        warm_start(build_model(ModelConfig.preset("spiking-useg", "small")), twin_run)


def test_distillation_loss_is_bce_against_the_teachers_probabilities() -> None:
    """Against the formula in numpy, and its gradient vanishes where the student already says
    what the teacher says (sigmoid(s) = sigmoid(t)): the term pulls only towards the teacher."""
    from spikeseg.training.losses import distillation_loss

    rng = np.random.default_rng(7)
    s, t = rng.normal(0, 2, (2, 3, 3, 5, 6)), rng.normal(0, 2, (2, 3, 3, 5, 6))
    q, p = 1 / (1 + np.exp(-t)), 1 / (1 + np.exp(-s))
    ref = -np.mean(q * np.log(p) + (1 - q) * np.log(1 - p))
    got = distillation_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32))
    assert float(got) == pytest.approx(ref, rel=1e-5)
    student = torch.tensor(t, dtype=torch.float32, requires_grad=True)
    distillation_loss(student, torch.tensor(t, dtype=torch.float32)).backward()
    assert float(student.grad.abs().max()) < 1e-7


def test_distillation_trains_the_snn_against_a_frozen_twin(phantom5: Path, tmp_path: Path) -> None:
    """``--distill`` needs the twin it learns from; the twin's run is read, never changed, and
    the teacher holds the twin's weights, frozen."""
    from spikeseg.training.run_folder import load_checkpoint
    from spikeseg.training.trainer import frozen_teacher

    twin_run = tmp_path / "twin"
    r = run_cli("train", "--data", phantom5, "--out", twin_run, "--arch", "useg", *TRAIN[:6], "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    before = (twin_run / "checkpoints" / "best.pt").read_bytes()
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "alone", "--arch", "spiking-useg", *TRAIN,
                "--distill", "1")
    assert r.returncode == 2 and "--distill needs --init-from" in r.stderr
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "snn", "--arch", "spiking-useg", *TRAIN,
                "--init-from", twin_run, "--distill", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "snn" / "config.json").read_text())["distill"] == 1.0
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "plain", "--arch", "spiking-useg", *TRAIN,
                "--init-from", twin_run)
    assert r.returncode == 0, r.stderr
    loss = {n: float(next(csv.DictReader((tmp_path / n / "metrics.csv").open()))["train_loss"]) for n in ("snn", "plain")}
    assert loss["snn"] > loss["plain"]  # same seed, same updates: the teacher's term is in the loss
    assert (twin_run / "checkpoints" / "best.pt").read_bytes() == before
    teacher = frozen_teacher(build_model(ModelConfig.preset("spiking-useg", "tiny")), twin_run, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    twin_weights = load_checkpoint(twin_run / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(v, twin_weights[k]) for k, v in teacher.state_dict().items())


@pytest.mark.parametrize("options", [[], ["--window-sampling", "sequential"], ["--window-sampling", "random", "--burn-in", "3"]])
def test_training_logs_firing_rates_inside_a_sane_band(phantom5: Path, tmp_path: Path, options: list[str]) -> None:
    """A few FPTT updates: activity.csv has per-layer rates and surrogate factors per update, and
    no layer is silent or saturated (0.2 % < rate < 60 %)."""
    run = tmp_path / "snn"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "spiking-useg", *TRAIN, "--epochs", "1", *options)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((run / "activity.csv").open()))
    assert len(rows) >= 4 and [int(x["update"]) for x in rows[:3]] == [1, 2, 3]
    rates = [float(v) for row in rows for k, v in row.items() if k.startswith("rate.")]
    sgs = [float(v) for row in rows for k, v in row.items() if k.startswith("surrogate.")]
    assert len(rates) == len(rows) * 7
    assert 0.002 < min(rates) and max(rates) < 0.6
    assert all(0 < g <= 1 for g in sgs)
    metrics = list(csv.DictReader((run / "metrics.csv").open()))
    assert 0 < float(metrics[-1]["rate_mean"]) < 0.6 and float(metrics[-1]["rate_min_layer"]) > 0


def test_recipe_defaults_apply_to_the_snn_only(phantom5: Path, tmp_path: Path) -> None:
    from spikeseg.training.config import TrainConfig
    from spikeseg.training.trainer import param_groups
    assert TrainConfig(data="", out="", arch="spiking-useg").resolved_readout_lr_scale() == SNN_RECIPE["readout_lr_scale"]
    assert TrainConfig(data="", out="", arch="spiking-useg").resolved_window_sampling() == SNN_RECIPE["window_sampling"]
    assert TrainConfig(data="", out="", arch="useg-clstm").resolved_window_sampling() == "sequential"
    assert TrainConfig(data="", out="", arch="useg").resolved_readout_lr_scale() == 1.0
    assert TrainConfig.of(data="", out="", arch="spiking-useg", readout_lr_scale=2).resolved_readout_lr_scale() == 2
    model = build_model(ModelConfig.preset("spiking-useg", "tiny"))
    groups = param_groups(model, 1e-3, 10.0)
    assert groups[1]["lr"] == pytest.approx(1e-2) and len(groups[1]["params"]) == 2  # readout weight, bias
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("neuron,reset,readout", [("snntorch-leaky", "zero", "membrane"), ("plif", "subtract", "spikes")])
def test_neuron_reset_and_readout_options_train_export_and_segment(phantom5: Path, phantom_root: Path, tmp_path: Path,
                                                                   neuron: str, reset: str, readout: str) -> None:
    """``--neuron snntorch-leaky``, ``--reset subtract`` and ``--readout-input membrane`` go
    through the same chain: trained, exported (the step graph carries the membranes), run
    without torch."""
    run = tmp_path / "run"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "spiking-useg", "--neuron", neuron,
                "--reset", reset, "--readout-input", readout, *TRAIN[:6], "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((run / "config.json").read_text())["model_config"]
    assert (cfg["neuron"], cfg["reset"], cfg["readout_input"]) == (neuron, reset, readout)
    r = run_cli("export", run, "--out", tmp_path / "bundle")
    assert r.returncode == 0, r.stderr
    case = sorted(phantom_root.iterdir())[0]
    r = run_cli("segment", tmp_path / "bundle", case, tmp_path / "out", "--backend", "onnxruntime", "--quiet",
                "--count-ops", block_torch=True)
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "out" / case.name / f"{case.name}_report.json").read_text())
    ops = rep["operations"]["axial"]
    assert ops["effective_acs"] > 0 and ops["membrane_updates"] > 0
    layers = {l["name"]: l for l in json.loads((tmp_path / "bundle" / "manifest.json").read_text())
              ["views"]["axial"]["layers"]}
    assert layers["readout"]["spike_input"] is (readout == "spikes")  # a membrane readout is counted as MACs


def test_warm_start_takes_each_views_twin_from_a_view_all_run(bundles, tmp_path: Path) -> None:
    """``--init-from`` a folder of per-view twin runs picks the matching view; a twin of another
    view (same weights' shapes, other slice orientation) is refused."""
    from spikeseg.runtime.errors import InputError
    from spikeseg.training.run_folder import twin_run_for

    twins = bundles["runs"] / "useg"
    assert twin_run_for(twins, "axial") == twins / "axial"
    assert twin_run_for(twins / "coronal", "coronal") == twins / "coronal"
    with pytest.raises(InputError, match="is a coronal run; the axial model needs an? axial twin"):
        twin_run_for(twins / "coronal", "axial")
    with pytest.raises(InputError, match="not a training run"):
        twin_run_for(tmp_path, "axial")


def test_binary_quantiser_is_the_least_squares_one_bit_fit_of_a_relu() -> None:
    """A two-valued ReLU output is fitted exactly; on a Gaussian sample the fit is within 0.5 % of
    the best threshold found by trying every sample value."""
    from spikeseg.training.conversion import binary_quantiser

    t, s = binary_quantiser(np.r_[-np.ones(50), 2 * np.ones(50)])
    assert s == pytest.approx(2.0) and 0 < t <= 2
    y = np.random.default_rng(3).normal(size=4000)
    r = np.maximum(y, 0)

    def err(t: float, s: float) -> float:
        return float(np.mean((r - s * (y >= t)) ** 2))

    best = min(err(v, float(r[y >= v].mean())) for v in np.sort(y[y > 0]))
    t, s = binary_quantiser(y)
    assert err(t, s) <= best * 1.005
    assert s == pytest.approx(float(r[y >= t].mean()))


def test_folded_spike_scales_give_the_logits_of_scaled_spikes() -> None:
    """Folding each layer's scale into the weights that read it (deconvs, the decoder convs'
    two halves, the readout) equals multiplying that layer's spikes by it."""
    import copy

    from spikeseg.training.conversion import fold_input_scales, spiking_layers

    torch.manual_seed(0)
    snn = build_model(ModelConfig.preset("spiking-useg", "tiny")).eval()
    neurons = spiking_layers(snn)
    for n in neurons.values():
        n.theta.data.fill_(0.3)  # plenty of spikes in every layer
    scales = {k: 0.5 + 0.3 * i for i, k in enumerate(neurons)}
    scaled = copy.deepcopy(snn)
    for k, n in spiking_layers(scaled).items():
        n.register_forward_hook(lambda mod, inp, out, s=scales[k]: out._replace(spikes=out.spikes * s))
    fold_input_scales(snn, scales)
    x = torch.rand(1, 5, 4, 32, 24)
    with torch.no_grad():
        want, _ = scaled(x)
        got, _ = snn(x)
    assert float(want.std()) > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reset", [False, True])
def test_conversion_scores_its_thresholds_the_way_the_model_will_run(reset: bool) -> None:
    """The threshold factor is chosen on the NLL of the SNN as it will be trained and run: with
    the membrane reset every slice (``--state-reset``, the fidelity benchmark's ablation) too."""
    from spikeseg.runtime.metrics import nll
    from spikeseg.training.conversion import balance
    from spikeseg.training.predict import predict_views

    torch.manual_seed(0)
    twin = build_model(ModelConfig.preset("useg", "tiny")).eval()
    snn = build_model(ModelConfig.preset("spiking-useg", "tiny"))
    snn.load_state_dict(twin.state_dict(), strict=False)
    rng = np.random.default_rng(0)
    calibration = [(rng.random((4, 16, 24, 12), dtype=np.float32), rng.random((3, 16, 24, 12)) < 0.2)
                   for _ in range(2)]
    conv = balance(snn, twin, calibration, "axial", reset_every_step=reset)
    images = [im for im, _ in calibration]

    def mean_nll(with_reset: bool) -> float:
        probs = predict_views(snn, images, "axial", reset_every_step=with_reset)
        return float(np.mean([nll(p, r) for p, (_, r) in zip(probs, calibration)]))

    assert conv["calibration_nll"] == pytest.approx(mean_nll(reset), rel=1e-6)
    assert mean_nll(reset) != pytest.approx(mean_nll(not reset), rel=1e-6)  # the reset changes what is scored


def test_warm_start_converts_by_default_and_copies_when_asked(phantom5: Path, tmp_path: Path) -> None:
    """Converting is the default, and so are the converted SNN's learning rate decaying to
    the recipe's share of --lr over the budget and its PLIFs starting at the recipe's tau;
    copying keeps the plain schedule and the paper's tau 2."""
    from spikeseg.training.config import DEFAULT_INIT_TAU
    from spikeseg.training.conversion import FACTORS

    twin_run = tmp_path / "twin"
    r = run_cli("train", "--data", phantom5, "--out", twin_run, "--arch", "useg", *TRAIN[:6], "--epochs", "1", "--quiet")
    assert r.returncode == 0, r.stderr
    thetas = {}
    for mode in ("balance", "copy"):
        r = run_cli("train", "--data", phantom5, "--out", tmp_path / mode, "--arch", "spiking-useg", *TRAIN[:6],
                    "--epochs", "2", "--quiet", "--init-from", twin_run, *(["--convert", "copy"] if mode == "copy" else []))
        assert r.returncode == 0, r.stderr
        cfg = json.loads((tmp_path / mode / "config.json").read_text())
        assert cfg["convert"] == mode
        ckpt = torch.load(tmp_path / mode / "checkpoints" / "last.pt", weights_only=True)
        thetas[mode] = {k: float(v) for k, v in ckpt["model"].items() if k.endswith(".act.theta")}
        lrs = [row["lr"] for row in ckpt["history"]]
        tau = CONVERTED["init_tau_x_tau_min"] if mode == "balance" else DEFAULT_INIT_TAU
        assert ckpt["model_config"]["init_tau"] == tau
        decay = [torch.sigmoid(v) for k, v in ckpt["model"].items() if k.endswith(".act.w")]
        assert decay and all(abs(1 / float(d) - tau) < 0.05 * tau for d in decay)  # learnable, moved little
        ratio = CONVERTED["lr_decay_to"] if mode == "balance" else 1.0
        assert lrs == pytest.approx([1e-3 * ratio ** 0.5, 1e-3 * ratio])
        if mode == "balance":
            conv = cfg["conversion"]
            assert conv["factor"] in FACTORS and set(conv["thresholds"]) == set(conv["scales"])
            assert len(conv["thresholds"]) == len(thetas[mode])
        else:
            assert cfg["conversion"] is None
    assert all(v == 1.0 for v in thetas["copy"].values())
    assert all(v != 1.0 for v in thetas["balance"].values())


def test_initial_tau_follows_the_recipe_and_refuses_what_plif_cannot_start_at() -> None:
    """--init-tau wins over the recipe; the converted default scales with --tau-min; a tau at or
    under the floor, or a tau for the snnTorch neuron (it has a beta), is a clear error."""
    from spikeseg.runtime.errors import InputError
    from spikeseg.training.config import TrainConfig

    def cfg(**kw: object) -> TrainConfig:
        return TrainConfig.of(data="d", out="o", arch="spiking-useg", **kw)

    assert cfg().resolved_init_tau() == 2.0
    assert cfg(init_from="twin").resolved_init_tau() == CONVERTED["init_tau_x_tau_min"]
    assert cfg(init_from="twin", convert="copy").resolved_init_tau() == 2.0
    assert cfg(init_from="twin", tau_min=1.5).resolved_init_tau() == pytest.approx(1.5 * CONVERTED["init_tau_x_tau_min"])
    assert cfg(init_from="twin", init_tau=3.0).resolved_init_tau() == 3.0
    with pytest.raises(InputError, match="must exceed --tau-min"):
        cfg(init_tau=1.0).resolved_init_tau()
    with pytest.raises(InputError, match="must exceed --tau-min"):
        cfg(tau_min=2.5).resolved_init_tau()
    with pytest.raises(InputError, match="snntorch-leaky"):
        cfg(init_tau=1.5, neuron="snntorch-leaky").resolved_init_tau()


def test_a_bad_initial_tau_is_refused_before_anything_is_written(phantom5: Path, tmp_path: Path) -> None:
    run = tmp_path / "snn"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "spiking-useg", *TRAIN[:6], "--init-tau", "0.9",
                "--quiet")
    assert r.returncode == 2 and "must exceed --tau-min" in r.stderr
    assert not run.exists()


def test_budget_decay_follows_the_clock_when_minutes_end_first(phantom5: Path, tmp_path: Path) -> None:
    """With --max-minutes the decay tracks the share of the time budget spent, so a run stopped by
    the clock ends at RATIO x --lr whatever its epoch count; --lr-decay and --lr-decay-to are
    refused together."""
    run = tmp_path / "snn"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "spiking-useg", *TRAIN[:6], "--epochs", "50",
                "--max-minutes", "0.05", "--lr-decay-to", "0.1", "--quiet")
    assert r.returncode == 0, r.stderr
    hist = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert len(hist) < 50, "the clock, not the epochs, should end this run"
    lrs = [row["lr"] for row in hist]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(1e-4, rel=1e-9)
    assert lrs[0] < 1e-3 * 0.1 ** (1 / 50), "the clock, not the epoch count, sets the decay"
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "both", "--arch", "spiking-useg", *TRAIN[:6],
                "--lr-decay", "0.1", "--lr-decay-to", "0.5", "--quiet")
    assert r.returncode == 2 and "choose one" in r.stderr


def test_val_both_ways_selects_by_the_runtimes_default_pass(phantom5: Path, tmp_path: Path) -> None:
    """``--val-both-ways`` scores validation as the bundle will run: the logged NLL is the one of
    the averaged front-to-back and back-to-front probabilities, not of the forward pass alone."""
    from spikeseg.training.data import preprocess_dataset
    from spikeseg.training.predict import predict_views
    from spikeseg.training.run_folder import load_run
    from spikeseg.training.loop import validation_scores

    run = tmp_path / "snn"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "spiking-useg", *TRAIN[:6], "--epochs", "1",
                "--quiet", "--val-both-ways")
    assert r.returncode == 0, r.stderr
    logged = float(next(csv.DictReader((run / "metrics.csv").open()))["val_nll"])
    model, info, params = load_run(run)
    val_ids = json.loads((run / "splits.json").read_text())["validation"]
    cases = {c.case_id: c.load() for c in preprocess_dataset(phantom5, run / "preprocessed", params, progress=False)}
    images = [np.asarray(cases[i][0]) for i in val_ids]

    def val_nll(both_ways: bool) -> float:
        with torch.no_grad():
            probs = predict_views(model, images, "axial", both_ways=both_ways)
        return validation_scores(zip(probs, (cases[i][1] for i in val_ids)))["val_nll"]

    both, forward = val_nll(True), val_nll(False)
    assert logged == pytest.approx(both, abs=6e-7)  # metrics.csv keeps 6 decimals
    assert abs(logged - forward) > 2e-6 + abs(logged - both)


@pytest.mark.parametrize("readout", ["spikes", "membrane"])
def test_every_layer_analog_gives_back_the_twins_logits(readout: str) -> None:
    """With every spiking layer replaced by the twin's ReLU over its folded spike scale, the
    converted SNN computes its twin's logits (the folding and the stand-in are exact); with none
    it does not, and leaving the block restores the spiking model."""
    from spikeseg.snn.neurons import SpikingLayer
    from spikeseg.training.conversion import analog_layers, balance, spiking_layers

    torch.manual_seed(0)
    twin = build_model(ModelConfig.preset("useg", "tiny")).eval()
    snn = build_model(ModelConfig.preset("spiking-useg", "tiny", readout_input=readout)).eval()
    snn.load_state_dict(twin.state_dict(), strict=False)
    rng = np.random.default_rng(0)
    calibration = [(rng.random((4, 16, 24, 12), dtype=np.float32), rng.random((3, 16, 24, 12)) < 0.2)
                   for _ in range(2)]
    scales = balance(snn, twin, calibration, "axial")["scales"]
    x = torch.rand(1, 5, 4, 32, 24)
    with torch.no_grad():
        want, _ = twin(x)
        spiking_before, _ = snn(x)
        with analog_layers(snn, scales, spiking_layers(snn)):
            got, _ = snn(x)
        spiking_after, _ = snn(x)
    assert float(want.std()) > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(spiking_before, want, atol=1e-2)
    torch.testing.assert_close(spiking_after, spiking_before)
    assert len(spiking_layers(snn)) == 7 and all(isinstance(n, SpikingLayer) for n in spiking_layers(snn).values())
    with pytest.raises(ValueError, match="no spiking layers"):
        with analog_layers(snn, scales, ["down.9"]):
            pass


def test_binarisation_benchmark_scores_each_layer_and_checks_itself_against_the_twin(bundles, phantom5: Path,
                                                                                      tmp_path: Path) -> None:
    """One row per analog layer set and the twin's own; the all-analog row is the twin's score;
    the twin run is left as it was, and a second run will not overwrite the results."""
    from spikeseg.benchmarks.binarisation import main as binarisation

    twin = bundles["runs"] / "useg"
    before = (twin / "axial" / "checkpoints" / "best.pt").read_bytes()
    out = tmp_path / "bin"
    assert binarisation(["--twin", str(twin), "--data", str(phantom5), "--out", str(out), "--views", "axial"]) == 0
    with open(out / "results.csv") as f:
        rows = {r["analog"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["none", "down.0", "down.1", "down.2", "up.0", "up.0.block", "up.1", "up.1.block", "all",
                          "(the twin, its own run)"]
    for key in ("val_dice_ET", "val_dice_TC", "val_dice_WT", "val_nll"):
        assert float(rows["all"][key]) == pytest.approx(float(rows["(the twin, its own run)"][key]), rel=1e-3, abs=1e-4)
    assert (twin / "axial" / "checkpoints" / "best.pt").read_bytes() == before
    text = (out / "results.md").read_text()
    with pytest.raises(SystemExit, match="results exist"):
        binarisation(["--twin", str(twin), "--data", str(phantom5), "--out", str(out), "--views", "axial"])
    assert (out / "results.md").read_text() == text
