"""The bundle contract: what export writes is what the runtime reads back, and a spec the
runtime cannot run is refused by name, not run wrongly."""

from __future__ import annotations

import json

import pytest

from spikeseg.export.graphs import view_spec
from spikeseg.runtime.bundle_spec import ViewSpec
from spikeseg.runtime.errors import InputError
from spikeseg.snn.models import ModelConfig, build_model

MODEL = {"file": "axial_fp32.onnx", "sha256": "0" * 64, "format": "onnx", "precision": "fp32"}


def written(arch: str) -> dict:
    """A view's manifest entry as export writes it (through JSON), with one model file."""
    spec = view_spec(build_model(ModelConfig.preset(arch, "tiny")), 20, 24, 30)
    return json.loads(json.dumps({**spec.to_dict(), "models": [MODEL]}))


@pytest.mark.parametrize("arch,execution,states", [("spiking-useg", "slice-sequence-both-ways", 7),
                                                   ("useg", "slice-batches", 0),
                                                   ("useg-clstm", "slice-sequence-both-ways", 2)])
def test_spec_round_trips_and_says_how_the_model_runs(arch: str, execution: str, states: int) -> None:
    model = build_model(ModelConfig.preset(arch, "tiny"))
    spec = view_spec(model, 20, 24, 30)
    back = ViewSpec.parse(written(arch), "axial", None)
    assert back.execution == execution and len(back.states) == states
    # a stateful model runs its 30 slices both ways by default: 60 steps a case
    assert back.slices_per_case == 30 * back.passes and back.passes == (2 if states else 1)
    one_way = view_spec(model, 20, 24, 30, both_ways=False)
    assert one_way.execution == ("slice-sequence" if states else "slice-batches") and one_way.slices_per_case == 30
    assert (back.states, back.layers, back.ops, back.acts, back.mems) == (spec.states, spec.layers, spec.ops,
                                                                          spec.acts, spec.mems)
    # names the step graph is exported with, derived in one place
    assert back.output_names()[0] == "logits" and back.input_names()[0] == "x"
    assert all(s.input == f"state.{s.name}" and s.output == f"state_out.{s.name}" for s in back.states)
    assert len(back.output_names()) == 1 + states + len(back.ops) + len(back.acts) + len(back.mems)
    # dense MACs: the layers' own arithmetic, in_c * out_c * k * k * grid
    first = back.layers[0]
    assert first.dense_macs_per_slice == 4 * model.cfg.widths[0] * 9 * 20 * 24


@pytest.mark.parametrize("damage,message", [
    (lambda d: d.update(execution="patches-3d"), "runs as 'patches-3d', which this spikeseg cannot run"),
    (lambda d: d.update(execution=["slice-sequence"]), "cannot run"),
    (lambda d: d.update(execution="slice-batches"), "runs as slice-batches but has 7 states"),
    (lambda d: d.update(execution="slice-sequence-one-way"), "cannot run"),
    (lambda d: d["layers"][0].update(kind="Conv2d"), "malformed layer 'down0.conv'"),
    (lambda d: d["layers"][0].update(in_channels=True), "integer >= 1 for in_channels"),
    (lambda d: d["states"][0].update(shape=[8, -1, 3]), "state v_down0"),
    (lambda d: d["outputs"].update(ops=d["outputs"]["ops"][:-1]), "counters that do not match"),
    (lambda d: d.update(training=[]), "objects (or null)"),
])
def test_a_spec_the_runtime_cannot_run_is_refused_by_name(damage, message: str) -> None:
    d = written("spiking-useg")
    damage(d)
    with pytest.raises(InputError, match="malformed manifest: view 'axial' .*" + message.replace("(", r"\(")
                       .replace(")", r"\)")):
        ViewSpec.parse(d, "axial", None)
