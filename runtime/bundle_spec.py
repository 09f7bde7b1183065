"""The bundle contract: one view model's spec, typed and versioned, which export writes into a
bundle's ``manifest.json`` and the runtime reads back (as nnU-Net writes its plans to disk and
reads them back, rather than re-deriving them).

A spec says everything the runtime needs to run a model it has never seen, and nothing else
decides it: the names of the step graph's inputs and outputs (made here and nowhere else), the
state layout, the operation counters, the layers behind the counts, the slice geometry, the
model files with their checksums, and *how the model runs* (:data:`EXECUTIONS`). A model that
runs differently (3D patches with sliding-window blending, cascades) adds an execution here and
its runner in :mod:`spikeseg.runtime.inference`; a runtime that does not know an execution
refuses the bundle with a clear error instead of running it wrongly.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spikeseg.runtime import schema as js
from spikeseg.runtime.errors import InputError

#: 3: per-view typed spec with ``execution``; state/counter names derived, not stored.
#: 2: step graphs count membrane updates (outputs.mems)
SCHEMA_VERSION = 3
FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "int8")
#: how a view model runs, by name: the runtime dispatches on this and nothing else
EXECUTIONS = {
    "slice-sequence": "one slice per step, front to back, each step's states fed to the next "
                      "(Spiking U-Seg-Net, U-Seg-Net + ConvLSTM)",
    "slice-sequence-both-ways": "the slice sequence run twice, front to back and back to front, each pass "
                                "one slice per step with its own states from zero; the two passes' "
                                "probabilities averaged, so every slice has context from both sides "
                                "(Spiking U-Seg-Net, U-Seg-Net + ConvLSTM, by default)",
    "slice-batches": "slices in batches, no state (U-Seg-Net)",
    "patch-sliding-window": "3D patches over the whole model grid, overlapping, class logits blended with a "
                            "Gaussian weight, softmax to the nested regions, mirrored copies as test-time "
                            "augmentation whose spread is the uncertainty (lite 3D U-Net)",
}
SLIDING = "patch-sliding-window"
#: the stateful executions, by the number of passes over the slices they make
SEQUENCE_PASSES = {"slice-sequence": 1, "slice-sequence-both-ways": 2}
#: the manifest's "views" name for the one model of a volume architecture
VOLUME = "volume"
#: the classes a sliding-window model's logits stand for, in order (the regions are sums of them)
VOLUME_CLASSES = ("background", "NCR", "ED", "ET")
INPUT = "x"
LOGITS = "logits"
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


def ops_output(layer: str) -> str:
    """Output name of a layer's effective synaptic operations counter."""
    return f"ops.{layer}"


def act_output(activation: str) -> str:
    """Output name of an activation's nonzero counter."""
    return f"act.{activation}"


def mem_output(neurons: str) -> str:
    """Output name of a neuron layer's changed-membranes counter."""
    return f"mem.{neurons}"


def is_counter(output: str) -> bool:
    """An operation counter's output (pruned from the deployed graph unless counts are asked for)."""
    return output.startswith(("ops.", "act.", "mem."))


def _malformed(where: Path | None, problem: str) -> InputError:
    return InputError(where, f"malformed manifest: {problem}")


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle: its path relative to the bundle root and its sha256."""

    file: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "sha256": self.sha256}

    @staticmethod
    def json_schema() -> dict[str, Any]:
        return js.obj({"file": js.string(), "sha256": js.string(pattern=r"^[0-9a-fA-F]{64}$")},
                      required=("file", "sha256"))

    @classmethod
    def parse(cls, d: Any, what: str, where: Path | None) -> "FileEntry":
        if not isinstance(d, dict) or not isinstance(d.get("file"), str):
            raise _malformed(where, f"{what}: every file entry needs a 'file' string")
        digest = d.get("sha256")
        if not isinstance(digest, str) or not _SHA256.match(digest.lower()):
            raise _malformed(where, f"{what}: file {d['file']!r} has sha256 {str(digest)[:80]!r}, not 64 hexadecimal "
                                    "digits")
        return cls(d["file"], digest.lower())  # hex is case-free: an upper-case digest is the same digest


@dataclass(frozen=True)
class ModelEntry:
    """One exported model of a view: ONNX, or OpenVINO IR with its weights file."""

    file: FileEntry
    format: str
    precision: str
    weights: FileEntry | None = None

    def files(self) -> list[FileEntry]:
        return [self.file] + ([self.weights] if self.weights else [])

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {**self.file.to_dict(), "format": self.format, "precision": self.precision}
        if self.weights:
            d["weights"] = self.weights.to_dict()
        return d

    @staticmethod
    def json_schema() -> dict[str, Any]:
        entry = FileEntry.json_schema()
        return {**js.obj({**entry["properties"], "format": js.string(FORMATS), "precision": js.string(PRECISIONS),
                          "weights": entry}, required=("file", "sha256", "format", "precision")),
                "if": {"properties": {"format": {"const": "openvino"}}}, "then": {"required": ["weights"]}}

    @classmethod
    def parse(cls, d: Any, what: str, where: Path | None) -> "ModelEntry":
        if not isinstance(d, dict) or d.get("format") not in FORMATS or d.get("precision") not in PRECISIONS:
            raise _malformed(where, f"{what}: a model entry needs format {FORMATS} and precision fp32/int8")
        weights = None
        if d["format"] == "openvino":
            if not isinstance(d.get("weights"), dict):
                raise _malformed(where, f"{what}: OpenVINO model {d.get('file')!r} lacks its weights entry")
            weights = FileEntry.parse(d["weights"], what, where)
        return cls(FileEntry.parse(d, what, where), d["format"], d["precision"], weights)


@dataclass(frozen=True)
class StateSpec:
    """One state tensor carried from slice to slice (a membrane, a ConvLSTM h or c)."""

    name: str
    shape: tuple[int, ...]  # per sample (C, H, W)

    @property
    def input(self) -> str:
        return f"state.{self.name}"

    @property
    def output(self) -> str:
        return f"state_out.{self.name}"


@dataclass(frozen=True)
class LayerSpec:
    """A conv or deconv layer behind the operation counts and the energy estimate."""

    name: str
    module: str             # path in the trained model (exported weights are named after it)
    kind: str               # "conv" | "deconv"
    in_channels: int
    out_channels: int
    kernel: tuple[int, ...]  # (kh, kw) of a slice model, (kd, kh, kw) of a volume model
    grid: tuple[int, ...]    # the layer's input grid, of as many axes as the kernel
    spike_input: bool       # fed by binary spikes: its synaptic operations are accumulates
    output_scale: int       # output positions per input position (a 2x2 stride-2 deconv: 4)
    groups: int = 1         # grouped conv: each output reads in_channels / groups inputs

    @property
    def dense_macs_per_slice(self) -> int:
        """Per step of the graph: a slice, or a patch of a volume model."""
        return (self.in_channels // self.groups) * self.out_channels * math.prod(self.kernel) * math.prod(self.grid)

    @staticmethod
    def json_schema() -> dict[str, Any]:
        return js.obj({"name": js.string(), "module": js.string(), "kind": js.string(("conv", "deconv")),
                       "in_channels": js.integer(1), "out_channels": js.integer(1), "kernel": js.shape(),
                       "grid": js.shape(), "spike_input": {"type": "boolean"}, "output_scale": js.integer(1),
                       "groups": js.integer(1), "dense_macs_per_slice": js.integer(0)}, required=_LAYER_KEYS)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "module": self.module, "kind": self.kind, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "kernel": list(self.kernel), "grid": list(self.grid),
                "spike_input": self.spike_input, "output_scale": self.output_scale, "groups": self.groups,
                "dense_macs_per_slice": self.dense_macs_per_slice}


@dataclass(frozen=True)
class WindowSpec:
    """How a volume model tiles a case (``patch-sliding-window``): patch size on the model grid,
    overlap between neighbouring patches (nnU-Net's 0.5), the Gaussian weight's sigma as a share
    of the patch (nnU-Net's 1/8), and the mirrored copies run as test-time augmentation (each a
    tuple of flipped spatial axes; ``()`` is the image as it is)."""

    patch: tuple[int, int, int]
    overlap: float = 0.5
    sigma_scale: float = 0.125
    flips: tuple[tuple[int, ...], ...] = ((),)
    classes: tuple[str, ...] = VOLUME_CLASSES

    @staticmethod
    def json_schema() -> dict[str, Any]:
        return js.obj({"patch": js.shape(3), "overlap": js.number(0, 0.999999), "sigma_scale": js.number(1e-9),
                       "flips": js.array(js.array(js.integer(0)), min_items=1),
                       "classes": {"const": list(VOLUME_CLASSES)}},
                      required=("patch", "overlap", "sigma_scale", "flips", "classes"))

    def to_dict(self) -> dict[str, Any]:
        return {"patch": list(self.patch), "overlap": self.overlap, "sigma_scale": self.sigma_scale,
                "flips": [list(f) for f in self.flips], "classes": list(self.classes)}


@dataclass(frozen=True)
class ViewSpec:
    """Everything the runtime needs to run and account for one view model."""

    execution: str
    in_channels: int
    slice_shape: tuple[int, ...]  # one step's input grid: a slice (H, W) or a patch (D, H, W)
    slices_per_case: int          # steps per case on the model grid: slices x passes, or patches x flips
    states: tuple[StateSpec, ...]
    ops: tuple[str, ...]    # layers with an ``ops.<name>`` counter (effective synaptic operations)
    acts: tuple[str, ...]   # activations with an ``act.<name>`` counter (nonzero count)
    mems: tuple[str, ...]   # neuron layers with a ``mem.<name>`` counter (membranes changed)
    activation_shapes: dict[str, tuple[int, ...]]
    layers: tuple[LayerSpec, ...]
    models: tuple[ModelEntry, ...] = ()
    parameters: int = 0
    #: what the export measured and where the weights came from: reported, never steering
    report: dict[str, Any] = field(default_factory=dict)
    window: WindowSpec | None = None  # sliding-window executions only

    @property
    def stateful(self) -> bool:
        return self.execution in SEQUENCE_PASSES

    @property
    def passes(self) -> int:
        """Passes over a case's slices: 2 for ``slice-sequence-both-ways``, else 1."""
        return SEQUENCE_PASSES.get(self.execution, 1)

    @property
    def dense_macs_per_slice(self) -> int:
        return sum(layer.dense_macs_per_slice for layer in self.layers)

    @property
    def training_run(self) -> str | None:
        """The run folder the weights came from, as recorded at export (may be elsewhere now)."""
        run = (self.report.get("training") or {}).get("run")
        return run if isinstance(run, str) else None

    def input_names(self) -> list[str]:
        return [INPUT] + [s.input for s in self.states]

    def output_names(self) -> list[str]:
        """The step graph's outputs, in the order the exported graph returns them."""
        return ([LOGITS] + [s.output for s in self.states] + [ops_output(n) for n in self.ops]
                + [act_output(n) for n in self.acts] + [mem_output(n) for n in self.mems])

    def zero_states(self) -> dict[str, np.ndarray]:
        """The states before the first slice, by graph input name."""
        return {s.input: np.zeros((1, *s.shape), np.float32) for s in self.states}

    def with_models(self, models: list[ModelEntry], **report: Any) -> "ViewSpec":
        return replace(self, models=tuple(models), report={**self.report, **report})

    def to_dict(self) -> dict[str, Any]:
        return {"execution": self.execution, "in_channels": self.in_channels, "slice_shape": list(self.slice_shape),
                "slices_per_case": self.slices_per_case,
                "states": [{"name": s.name, "shape": list(s.shape)} for s in self.states],
                "outputs": {"ops": list(self.ops), "acts": list(self.acts), "mems": list(self.mems)},
                "activation_shapes": {k: list(v) for k, v in self.activation_shapes.items()},
                "layers": [layer.to_dict() for layer in self.layers],
                "dense_macs_per_slice": self.dense_macs_per_slice, "parameters": self.parameters,
                "models": [m.to_dict() for m in self.models],
                **({"window": self.window.to_dict()} if self.window else {}), **self.report}

    @staticmethod
    def json_schema() -> dict[str, Any]:
        names = js.array(js.string())
        return {**js.obj({
            "execution": js.string(tuple(EXECUTIONS)), "in_channels": js.integer(1), "slice_shape": js.shape(),
            "slices_per_case": js.integer(1),
            "states": js.array(js.obj({"name": js.string(), "shape": js.shape()}, required=("name", "shape"))),
            "outputs": js.obj({"ops": names, "acts": names, "mems": names}, required=("ops", "acts", "mems")),
            "activation_shapes": js.mapping(js.shape()), "layers": js.array(LayerSpec.json_schema()),
            "dense_macs_per_slice": js.integer(0), "parameters": js.integer(0),
            "models": js.array(ModelEntry.json_schema(), min_items=1), "window": WindowSpec.json_schema(),
            **{k: js.nullable(js.ANY_OBJECT) for k in REPORT_KEYS}}, required=_VIEW_KEYS),
            "if": {"properties": {"execution": {"const": SLIDING}}}, "then": {"required": ["window"]}}

    @classmethod
    def parse(cls, d: Any, view: str, where: Path | None) -> "ViewSpec":
        """A view's spec from its manifest entry, every field checked: one clear error, no traceback."""
        return _Parser(view, where).spec(d)


_VIEW_KEYS = ("execution", "in_channels", "slice_shape", "slices_per_case", "states", "outputs",
              "activation_shapes", "layers", "models")
#: what the export measured and recorded (quantisation attempts, static counts, the training run)
REPORT_KEYS = ("static_ops", "quantisation", "training")
_LAYER_KEYS = ("name", "module", "kind", "in_channels", "out_channels", "kernel", "grid", "spike_input",
               "output_scale")


class _Parser:
    """Typed reading of one view's manifest entry; every problem names the view and the field."""

    def __init__(self, view: str, where: Path | None) -> None:
        self.view, self.where = view, where

    def bad(self, problem: str) -> InputError:
        return _malformed(self.where, f"view {self.view!r} {problem}")

    def count(self, v: Any, what: str, minimum: int = 0) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise self.bad(f"needs an integer >= {minimum} for {what}, not {v!r}")
        return v

    def shape(self, v: Any, what: str, n: int | None = None) -> tuple[int, ...]:
        if not isinstance(v, list) or (n is not None and len(v) != n) or not v:
            raise self.bad(f"needs a list of {n or 'some'} sizes for {what}, not {v!r}")
        return tuple(self.count(x, what, 1) for x in v)

    def names(self, v: Any, what: str) -> tuple[str, ...]:
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.bad(f"needs a list of names for {what}")
        return tuple(v)

    def spec(self, d: Any) -> ViewSpec:
        if not isinstance(d, dict):
            raise self.bad("must be an object")
        missing = [k for k in _VIEW_KEYS if k not in d]
        if missing:
            raise self.bad(f"lacks {missing}")
        if not isinstance(d["execution"], str) or d["execution"] not in EXECUTIONS:
            raise self.bad(f"runs as {d['execution']!r}, which this spikeseg cannot run "
                           f"(it runs {list(EXECUTIONS)}); use the spikeseg that exported it")
        if not isinstance(d["models"], list) or not d["models"]:
            raise self.bad("has no models")
        models = tuple(ModelEntry.parse(m, f"view {self.view!r}", self.where) for m in d["models"])
        states = d["states"]
        if not isinstance(states, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                   for s in states):
            raise self.bad("needs a list of states, each with a name and a shape")
        outputs = d["outputs"]
        if not isinstance(outputs, dict):
            raise self.bad("needs an 'outputs' object")
        shapes = d["activation_shapes"]
        if not isinstance(shapes, dict):
            raise self.bad("needs an 'activation_shapes' object")
        if not isinstance(d["layers"], list):
            raise self.bad("needs a list of layers")
        sliding = d["execution"] == SLIDING
        spec = ViewSpec(
            execution=d["execution"], in_channels=self.count(d["in_channels"], "in_channels", 1),
            slice_shape=self.shape(d["slice_shape"], "slice_shape", 3 if sliding else 2),
            slices_per_case=self.count(d["slices_per_case"], "slices_per_case", 1),
            states=tuple(StateSpec(s["name"], self.shape(s.get("shape"), f"state {s['name']}")) for s in states),
            ops=self.names(outputs.get("ops"), "outputs.ops"), acts=self.names(outputs.get("acts"), "outputs.acts"),
            mems=self.names(outputs.get("mems"), "outputs.mems"),
            activation_shapes={str(k): self.shape(v, f"activation {k}") for k, v in shapes.items()},
            layers=tuple(self.layer(x, 3 if sliding else 2) for x in d["layers"]), models=models,
            parameters=self.count(d.get("parameters", 0), "parameters"),
            report=self.report(d), window=self.window(d.get("window")) if sliding else None)
        if spec.stateful != bool(spec.states):
            raise self.bad(f"runs as {spec.execution} but has {len(spec.states)} states")
        unknown = [n for n in spec.mems + spec.acts if n not in spec.activation_shapes]
        counted = [layer.name for layer in spec.layers] if spec.ops else []  # a graph counts all layers or none
        if unknown or list(spec.ops) != counted:
            raise self.bad("has counters that do not match its layers and activations")
        return spec

    def window(self, d: Any) -> WindowSpec:
        if not isinstance(d, dict) or [k for k in ("patch", "overlap", "sigma_scale", "flips", "classes")
                                       if k not in d]:
            raise self.bad("runs by sliding window but lacks a 'window' with patch, overlap, sigma_scale, "
                           "flips and classes")
        overlap, sigma = d["overlap"], d["sigma_scale"]
        if not isinstance(overlap, (int, float)) or not 0 <= overlap < 1 \
                or not isinstance(sigma, (int, float)) or sigma <= 0:
            raise self.bad(f"needs 0 <= overlap < 1 and sigma_scale > 0, not {overlap!r}, {sigma!r}")
        flips = d["flips"]
        if not isinstance(flips, list) or not flips or not all(
                isinstance(f, list) and all(a in (0, 1, 2) for a in f) for f in flips):
            raise self.bad("needs 'flips' as a non-empty list of lists of spatial axes 0, 1, 2")
        if d["classes"] != list(VOLUME_CLASSES):
            raise self.bad(f"outputs classes {d['classes']!r}; this spikeseg reads {list(VOLUME_CLASSES)}")
        return WindowSpec(self.shape(d["patch"], "window.patch", 3), float(overlap), float(sigma),  # type: ignore[arg-type]
                          tuple(tuple(f) for f in flips))

    def report(self, d: dict[str, Any]) -> dict[str, Any]:
        report = {k: d[k] for k in REPORT_KEYS if k in d}
        if not all(v is None or isinstance(v, dict) for v in report.values()):
            raise self.bad(f"needs objects (or null) for {list(REPORT_KEYS)}")
        return report

    def layer(self, d: Any, axes: int) -> LayerSpec:
        """``axes``: 2 for a slice model's layers, 3 for a volume model's."""
        if not isinstance(d, dict) or [k for k in _LAYER_KEYS if k not in d]:
            raise self.bad(f"needs layers with {list(_LAYER_KEYS)}")
        if d["kind"] not in ("conv", "deconv") or not isinstance(d["spike_input"], bool) \
                or not isinstance(d["name"], str) or not isinstance(d["module"], str):
            raise self.bad(f"has a malformed layer {d.get('name')!r}")
        in_channels, groups = self.count(d["in_channels"], "in_channels", 1), self.count(d.get("groups", 1), "groups", 1)
        if in_channels % groups:
            raise self.bad(f"has layer {d['name']!r} whose groups do not divide its input channels")
        return LayerSpec(d["name"], d["module"], d["kind"], in_channels,
                         self.count(d["out_channels"], "out_channels", 1),
                         self.shape(d["kernel"], "kernel", axes), self.shape(d["grid"], "grid", axes),
                         d["spike_input"], self.count(d["output_scale"], "output_scale", 1), groups)
