"""Operation counts from the exported graphs and the runtime, the energy model, `spikeseg profile`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeseg.runtime.bundle import load_bundle
from spikeseg.runtime.energy import builtin_profiles, case_energy, roofline_seconds
from spikeseg.runtime.opcount import static_counts
from tests.helpers import run_cli


#: how far an INT8 graph's counts may sit from the FP32 torch model's (measured on the test
#: bundle: ONNX Runtime 0.02 %, OpenVINO 1.2 % in the ACs)
INT8_REL = 0.03


def test_static_counts_from_the_graph_match_the_torch_layer_table(bundles) -> None:
    for arch in ("spiking-useg", "useg"):
        b = load_bundle(bundles[arch])
        for view in b.views:
            spec = b.view(view)
            for fmt in ("onnx", "openvino"):
                counts = static_counts(b.model_file(view, fmt, "fp32").path)
                assert counts["macs_per_slice"] == spec.dense_macs_per_slice
                assert [l["macs"] for l in counts["layers"]] == [l.dense_macs_per_slice for l in spec.layers]
            assert spec.report["static_ops"]["macs_per_slice"] == spec.dense_macs_per_slice


@pytest.mark.parametrize("backend,precision,rel", [("onnxruntime", "fp32", 0.01), ("openvino", "fp32", 0.01),
                                                   ("onnxruntime", "int8", INT8_REL), ("openvino", "int8", INT8_REL)])
def test_runtime_counts_match_neurobench_on_the_same_case(bundles, phantom_root: Path, tmp_path: Path,
                                                          backend: str, precision: str, rel: float) -> None:
    """Each backend's in-graph counters vs NeuroBench's SynapticOperations and MembraneUpdates
    on the torch model (PLIFs made hookable, same weights). FP32 graphs fire the torch model's
    spikes, so the counts agree to 1 %; INT8 graphs fire a slightly different set (the
    quantised weights move membranes across the threshold), so they agree to ``INT8_REL``."""
    import snntorch
    from neurobench.metrics.workload import MembraneUpdates, SynapticOperations
    from neurobench.models import TorchModel

    from spikeseg.runtime.preprocess import load_model_space, to_view
    from spikeseg.snn.models import ActivationTap
    from spikeseg.snn.neurobench_compat import hookable
    from spikeseg.training.run_folder import load_run

    case = sorted(phantom_root.iterdir())[2]
    r = run_cli("segment", bundles["spiking-useg"], case, tmp_path / "o", "--backend", backend,
                "--precision", precision, "--views", "axial", "--quiet", "--count-ops")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "o" / case.name / f"{case.name}_report.json").read_text())
    ops = rep["operations"]["axial"]
    spec = load_bundle(bundles["spiking-useg"]).view("axial")
    conv_layers = {layer.name for layer in spec.layers if layer.kind == "conv"}
    spike_in = {layer.name: layer.spike_input for layer in spec.layers}
    ours_mac = sum(v for n, v in ops["per_layer_ops"].items() if n in conv_layers and not spike_in[n])
    ours_ac = sum(v for n, v in ops["per_layer_ops"].items() if n in conv_layers and spike_in[n])

    model, _, params = load_run(bundles["runs"] / "spiking-useg" / "axial")
    image = load_model_space(case, params).image
    seq = torch.from_numpy(np.ascontiguousarray(to_view(image, "axial"), dtype=np.float32))[None]
    # the bundle runs the SNN both ways, each pass up to the last slice with brain it meets (the
    # air after that skipped): NeuroBench counts the same two passes, each from a fresh state
    brain = np.flatnonzero(seq[0].flatten(1).abs().sum(1).numpy() > 0)
    passes = [seq[:, :brain[-1] + 1], seq[:, brain[0]:].flip(1)]
    assert spec.passes == 2 and ops["slices"] == sum(p.shape[1] for p in passes)
    assert ops["slices"] + ops["air_slices_skipped"] == 2 * seq.shape[1]
    nb_mac = nb_ac = mem = 0.0
    for sequence in passes:
        nb = TorchModel(hookable(model))
        nb.add_activation_module(ActivationTap)
        nb.add_activation_module(snntorch.SpikingNeuron)
        nb.register_hooks()
        with torch.no_grad():
            preds, _ = nb(sequence)
        syn = SynapticOperations()(nb, preds, (sequence, None))
        mem += MembraneUpdates()(nb, preds, (sequence, None))
        nb.close_hooks()
        nb_mac += syn["Effective_MACs"]
        nb_ac += syn["Effective_ACs"]
    assert ours_mac == pytest.approx(nb_mac, rel=rel)
    assert ours_ac == pytest.approx(nb_ac, rel=rel)
    assert ops["membrane_updates"] == pytest.approx(mem, rel=rel)
    assert ops["membrane_updates"] < ops["membrane_updates_dense"]
    # the built-in profiles; ``host`` (no energy figure: no power counter) is profile's and bench's
    assert set(rep["energy"]) == {"asic-45nm", "rpi4-cortex-a72", "jetson-orin-nano-cpu", "intel-i7-1185G7", "loihi"}
    assert rep["energy"]["rpi4-cortex-a72"]["latency_kind"] == "roofline projection"


def test_energy_arithmetic_by_hand() -> None:
    p = builtin_profiles()
    counts = {"dense_macs": 1e9, "effective_macs": 2e8, "effective_acs": 3e8, "slices": 10}
    # event-driven 45 nm fp32: 2e8 x 4.6 pJ + 3e8 x 0.9 pJ = 0.92 mJ + 0.27 mJ
    assert case_energy(counts, "fp32", p["asic-45nm"])["joules"] == pytest.approx(1.19e-3)
    assert case_energy(counts, "int8", p["asic-45nm"])["joules"] == pytest.approx(2e8 * 0.23e-12 + 3e8 * 0.03e-12)
    # a CPU pays every dense MAC: 1e9 x 133 pJ
    assert case_energy(counts, "fp32", p["rpi4-cortex-a72"])["joules"] == pytest.approx(0.133)
    loihi = case_energy(counts, "fp32", p["loihi"])
    assert loihi["joules"] == pytest.approx(3e8 * 23.6e-12) and "left out" in loihi["note"]
    twin_on_loihi = case_energy({**counts, "effective_acs": 0.0}, "fp32", p["loihi"])
    assert twin_on_loihi["joules"] is None and twin_on_loihi["basis"] == "not applicable"
    # roofline: compute-bound at 48 GMAC/s unless the bytes say otherwise
    assert roofline_seconds(48e9, 0, "fp32", p["rpi4-cortex-a72"]) == pytest.approx(1.0)
    assert roofline_seconds(1, 12.8e9, "fp32", p["rpi4-cortex-a72"]) == pytest.approx(2.0)
    for prof in p.values():
        assert prof["sources"], "every number needs a source"


def test_profile_command_compares_snn_and_twin_without_torch(bundles, phantom_root: Path) -> None:
    case = sorted(phantom_root.iterdir())[0]
    r = run_cli("profile", bundles["spiking-useg"], "--twin", bundles["useg"], "--case", case,
                "--hardware", "asic-45nm,rpi4-cortex-a72", block_torch=True)
    assert r.returncode == 0, r.stderr
    assert "effective ACs (spikes in)" in r.stdout and "energy J, asic-45nm" in r.stdout
    snn_ops = re.search(r"model synaptic operations \(MACs \+ ACs\): ([0-9.e+-]+)x the twin's dense MACs", r.stdout)
    dense = re.search(r"model dense MACs: ([0-9.e+-]+)x the twin's", r.stdout)
    assert snn_ops and dense and "%" not in r.stdout.split("the twin's dense MACs")[0].splitlines()[-1]
    ens = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.startswith("dense MACs per case")]
    assert float(dense.group(1)) == pytest.approx(ens[0] / ens[1], rel=1e-2)  # the SNN's over the twin's, not inverted
    mem_rows = [l.split()[-1] for l in r.stdout.splitlines() if l.startswith("membrane updates (NeuroBench)")]
    assert len(mem_rows) == 2 and float(mem_rows[0]) > 0 and float(mem_rows[1]) == 0  # SNN, then twin
    plain = run_cli("profile", bundles["useg"])
    assert plain.returncode == 0 and "add --case CASE_FOLDER" in plain.stdout
    assert "ms per step, median" in plain.stdout and "latency measured on" in plain.stdout
    quick = run_cli("profile", bundles["useg"], "--iterations", "0")
    assert quick.returncode == 0 and "ms per step" not in quick.stdout and "latency measured" not in quick.stdout
    bad = run_cli("profile", bundles["useg"], "--hardware", "tpu-v9")
    assert bad.returncode == 2 and "tpu-v9" in bad.stderr


def _profile_file(path: Path, **changes) -> Path:
    prof = {"description": "a board", "architecture": "aarch64", "execution": "dense",
            "energy_pj": {"fp32": {"mac": 50.0, "ac": 50.0}, "int8": {"mac": 20.0, "ac": 20.0}},
            "peak_macs_per_s": {"fp32": 1e10, "int8": 4e10}, "memory_bandwidth_gb_s": 8.0, "power_w": 2.5,
            "sources": {"energy_pj": "2.5 W over 1e10 MAC/s (vendor datasheet)"}}
    name = changes.pop("name", "my-board")
    prof.update(changes)
    path.write_text(json.dumps({"schema_version": 1, "profiles": {name: prof}}))
    return path


def test_added_hardware_profiles_are_checked(tmp_path: Path) -> None:
    from spikeseg.runtime.energy import load_profiles_file, profiles
    from spikeseg.runtime.errors import InputError

    good = load_profiles_file(_profile_file(tmp_path / "p.json"))
    assert profiles("my-board", good)["my-board"]["energy_pj"]["int8"]["mac"] == 20.0
    assert "my-board" in profiles("builtin", good) and "my-board" not in profiles("builtin")
    for changes, message in [({"name": "loihi"}, "shadow the built-in"), ({"name": "My Board"}, "profile name"),
                             ({"execution": "quantum"}, "execution must be"),
                             ({"energy_pj": {"fp32": {"mac": -1, "ac": 1}, "int8": {"mac": 1, "ac": 1}}}, ">= 0"),
                             ({"sources": {}}, "where the energies come from")]:
        with pytest.raises(InputError, match=message):
            load_profiles_file(_profile_file(tmp_path / "bad.json", **changes))
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        load_profiles_file(tmp_path / "x.json")


def test_profile_json_with_an_added_profile(bundles, tmp_path: Path) -> None:
    """Without a case: the dense MACs from the graph and a dense profile's energy (MACs x E_MAC);
    event-driven profiles are left out, not zero."""
    r = run_cli("profile", bundles["useg"], "--profiles", _profile_file(tmp_path / "p.json"),
                      "--json", "--precision", "int8")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["bundles"]["model"]
    energy = out["energy"]
    assert out["counted_on_a_case"] is False and "loihi" not in energy and "asic-45nm" not in energy
    assert energy["my-board"]["joules_per_case"] == pytest.approx(out["ensemble"]["dense_macs"] * 20e-12, rel=1e-9)
    for view, counts in out["views"].items():  # benchmark_app's figures, each from the same timed steps
        lat = counts["latency"]
        assert lat["steps"] == 20 and 0 < lat["min_ms"] <= lat["median_ms"] <= lat["max_ms"]
        assert lat["steps_per_second"] == pytest.approx(1e3 / lat["median_ms"])
        assert lat["case_seconds"] == pytest.approx(lat["median_ms"] / 1e3 * counts["slices"])


def test_the_int8_peak_probe_runs_an_integer_kernel() -> None:
    """The INT8 peak is only reported when OpenVINO's compiled model says the convolution runs
    in u8/i8 (read back, the way the runtime reads back its compute precision)."""
    from spikeseg.runtime.energy import measure_conv_peaks

    peaks = measure_conv_peaks(threads=1, seconds=0.05)
    assert set(peaks["int8_kernel"].split(",")) & {"u8", "i8"}
    assert peaks["fp32"] > 0 and peaks["int8"] > 0
