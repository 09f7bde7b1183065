"""Run one view model of a bundle over a volume, on ONNX Runtime or OpenVINO, without torch.

The SNN runs slice by slice with every membrane potential fed back as an explicit input (by
default a pass each way, front to back and back to front, averaged); the stateless twin runs
slices in batches; a volume model (the lite 3D U-Net) by sliding window
(:mod:`spikeseg.runtime.sliding`). The spec's ``execution`` decides, nothing else.

A bundle holds one step graph per model, with the operation counters in it. An engine opened
with ``counting=False`` (the default: what a clinical case runs) prunes them: OpenVINO compiles
the graph without the counters' results, so their subgraph is never built, and ONNX Runtime
fetches only the logits and states with ``only_execute_path_to_fetches``. Same file, same
weights, the same arithmetic for the logits and states (tested); ``spikeseg profile``,
``segment --count-ops`` and the benchmarks open counting engines. Precision is always stated: OpenVINO compiles with
``INFERENCE_PRECISION_HINT=f32`` (on this CPU it would otherwise silently use bf16; INT8
models keep f32 for the layers left unquantised), and the report records it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import numpy as np

from spikeseg.runtime.bundle import Bundle, ModelFile
from spikeseg.runtime.bundle_spec import INPUT, LOGITS, ViewSpec, act_output, is_counter, mem_output, ops_output
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.ensemble import fuse, sigmoid, spread
from spikeseg.runtime.preprocess import VIEWS, from_view, to_view
from spikeseg.runtime.sliding import mirrored_predictions, steps_per_case
from spikeseg.runtime.system import check_threads

BACKENDS = ("openvino", "onnxruntime")
PRECISIONS = ("fp32", "int8")
STATELESS_BATCH = 4  # slices per call for the stateless twin: 16 cost 6-8 GB peak at paper scale


class Engine(Protocol):
    """One step of a model: feeds in, outputs out. The outputs may share the engine's own
    buffers: they stay valid through the next call (so a state can be fed straight back) and
    may be overwritten by the call after it; copy what you keep longer."""

    backend: str
    precision: str
    compute_precision: str
    counting: bool

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class OrtEngine:
    backend = "onnxruntime"

    def __init__(self, model: ModelFile, precision: str, threads: int, counting: bool = False) -> None:
        import onnxruntime as ort

        path = str(model.path)

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        try:
            # from verified bytes: no path, so no external data file can be pulled in unhashed
            self.session = ort.InferenceSession(model.model_bytes(), so, providers=["CPUExecutionProvider"])
        except InputError:
            raise
        except Exception as exc:
            raise InputError(path, f"ONNX Runtime cannot load the model: {exc}") from exc
        self.counting = counting
        self.input_shapes = {i.name: tuple(d if isinstance(d, int) else None for d in i.shape)
                             for i in self.session.get_inputs()}
        self.output_names = {o.name for o in self.session.get_outputs()}
        self.outputs = [o.name for o in self.session.get_outputs() if counting or not is_counter(o.name)]
        self.run_options = ort.RunOptions()
        self.run_options.only_execute_path_to_fetches = not counting
        self.precision = precision
        self.compute_precision = "int8 (QDQ convs) + fp32" if precision == "int8" else "fp32"

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds, self.run_options)))


class OvEngine:
    backend = "openvino"

    def __init__(self, model: ModelFile, precision: str, threads: int, counting: bool = False) -> None:
        import openvino as ov

        path = str(model.path)

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32",
                  "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        try:
            weights = np.frombuffer(model.weights_bytes() or b"", dtype=np.uint8)
            graph = core.read_model(model.model_bytes().decode(), ov.Tensor(weights))
            if not counting:
                for result in list(graph.get_results()):
                    if all(is_counter(n) for n in result.get_output_tensor(0).get_names()):
                        graph.remove_result(result)
            self.compiled = core.compile_model(graph, "CPU", config)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(path, f"OpenVINO cannot load the model: {exc}") from exc
        self.counting = counting
        self.input_shapes = {name: tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
                             for port in self.compiled.inputs for name in port.get_names()}
        self.output_names = {n for o in graph.outputs for n in o.get_names()} | {
            n for o in self.compiled.outputs for n in o.get_names()}
        # Two requests taking turns, inputs and outputs shared with numpy: a step's state
        # outputs are read in place as the next step's inputs by the other request, which
        # writes its outputs to its own buffers. Copying them out and back in cost 8 ms of a
        # 77 ms paper-scale SNN step (42 MB of membranes each way).
        self.requests = [self.compiled.create_infer_request() for _ in range(2)]
        self.turn = 0
        # a port may carry several tensor names (e.g. '/readout/Conv_output_0' and 'logits')
        self.outputs = [(sorted(o.get_names()), o) for o in self.compiled.outputs]
        prop = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # read back, not assumed
        hint = prop.to_string() if hasattr(prop, "to_string") else str(prop)
        self.precision = precision
        self.compute_precision = (f"int8 (FakeQuantize convs) + {hint}" if precision == "int8" else hint)

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self.requests[self.turn]
        self.turn ^= 1
        result = request.infer(feeds, share_inputs=True, share_outputs=True)
        out: dict[str, np.ndarray] = {}
        for names, port in self.outputs:
            out.update(dict.fromkeys(names, result[port]))
        return out


def open_engine(bundle: Bundle, view: str, backend: str, precision: str, threads: int,
                counting: bool = False) -> Engine:
    """An engine for one view model; ``counting``: keep the operation counters (see above)."""
    if backend not in BACKENDS:
        raise InputError(None, f"unknown backend {backend!r}; choose from {BACKENDS}")
    if precision not in PRECISIONS:
        raise InputError(None, f"unknown precision {precision!r}; choose from {PRECISIONS}")
    check_threads(threads)
    model = bundle.model_file(view, "onnx" if backend == "onnxruntime" else "openvino", precision)
    engine = (OrtEngine if backend == "onnxruntime" else OvEngine)(model, precision, threads, counting)
    check_graph_io(bundle.view(view), engine.input_shapes, engine.output_names, model.path)
    return engine


def check_graph_io(spec: ViewSpec, inputs: dict[str, tuple[int | None, ...]], outputs: set[str], where) -> None:
    """The compiled graph's inputs and outputs against what the manifest promises, before any
    case runs: a state shape that does not match once ended in a MemoryError or RuntimeError
    deep inside the engine. ``None`` dimensions are dynamic (the batch)."""
    expected = {INPUT: (spec.in_channels, *spec.slice_shape), **{s.input: s.shape for s in spec.states}}
    if set(inputs) != set(expected):
        raise InputError(where, f"the model's inputs {sorted(inputs)} are not the manifest's {sorted(expected)}")
    for name, shape in expected.items():
        got = inputs[name][1:]
        if len(got) != len(shape) or any(g is not None and g != e for g, e in zip(got, shape)):
            raise InputError(where, f"the model's input {name!r} has shape {list(inputs[name])}, but the manifest "
                                    f"says (batch, {', '.join(map(str, shape))})")
    missing = [n for n in [LOGITS] + [s.output for s in spec.states] if n not in outputs]
    if missing:
        raise InputError(where, f"the model lacks the outputs {missing} the manifest promises")


@dataclass
class ViewResult:
    view: str
    prob: np.ndarray                      # (3, X, Y, Z) in model space
    seconds: float
    slices: int                           # slices run (``skipped`` more were air)
    counted: bool = False                                 # the engine kept its counters
    ops: dict[str, float] = field(default_factory=dict)   # effective synaptic ops per layer, whole case
    acts: dict[str, float] = field(default_factory=dict)  # nonzero activations per layer, whole case
    mems: dict[str, float] = field(default_factory=dict)  # membrane updates per PLIF layer, whole case
    skipped: int = 0                                      # slices of air not run (probability 0)
    #: (3, X, Y, Z) std of the region probabilities across a volume model's mirrored copies
    spread: np.ndarray | None = None


def air_slices(seq: np.ndarray) -> np.ndarray:
    """Per slice of a normalised sequence (T, C, H, W): True where every channel is 0, i.e. the
    slice holds no brain (background and the box's padding normalise to 0)."""
    return ~np.any(seq, axis=tuple(range(1, seq.ndim)))  # no reshape: seq is a strided view


def slices_to_run(spec: ViewSpec, seq: np.ndarray) -> np.ndarray:
    """The slices worth running, in order. Why not all: the box around the brain still holds
    slices of air (4-8 % of a case's slices on MNI-anatomy phantoms), and air has no tumour.
    Stateless: every slice with brain. Stateful (SNN, ConvLSTM): every slice up to the last one
    with brain; the air before the brain stays, because it moves the state the brain slices see
    (a model on zeros still charges its membranes from its biases), and only the trailing air
    can go without changing any other slice's output."""
    brain = np.flatnonzero(~air_slices(seq))
    if not spec.stateful:
        return brain
    return np.arange(brain[-1] + 1 if brain.size else 0)


def feed_back(engine: Engine, spec: ViewSpec, seq: np.ndarray, batch: int = STATELESS_BATCH,
              order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, dict, dict]]:
    """Run a slice sequence (T, C, H, W) through a step graph as its spec's execution says: the
    one state-feedback loop, which inference, INT8 calibration and the latency benchmark all
    step through. ``slice-sequence``: one slice per step, front to back, each step's state
    outputs fed back as the next step's state inputs (zeros before the first slice);
    ``slice-batches``: ``batch`` slices per step, no state. ``order``: the slice indices to run
    (default all). Yields (the step's slice indices, feeds, outputs)."""
    order = np.arange(seq.shape[0]) if order is None else np.asarray(order)
    states = spec.zero_states()
    step = 1 if spec.stateful else batch
    for k in range(0, len(order), step):
        idx = order[k:k + step]
        feeds = {INPUT: np.ascontiguousarray(seq[idx], dtype=np.float32), **states}
        out = engine(feeds)
        yield idx, feeds, out
        states = {s.input: out[s.output] for s in spec.states}


def pass_orders(spec: ViewSpec, seq: np.ndarray, skip_air: bool = True) -> list[np.ndarray]:
    """The slice indices each pass over a sequence runs, in the order it runs them: front to back,
    and for ``slice-sequence-both-ways`` back to front as well. Each pass skips only what
    :func:`slices_to_run` would skip of the sequence as that pass sees it (so the backward pass
    keeps the trailing air, which comes first for it)."""
    t = seq.shape[0]
    forward = slices_to_run(spec, seq) if skip_air else np.arange(t)
    if spec.passes == 1:
        return [forward]
    backward = t - 1 - (slices_to_run(spec, seq[::-1]) if skip_air else np.arange(t))
    return [forward, backward]


def run_view(engine: Engine, spec: ViewSpec, image: np.ndarray, view: str,
             advance: Callable[[int], object] | None = None, skip_air: bool = True) -> ViewResult:
    """(4, X, Y, Z) model-space image to (3, X, Y, Z) probabilities and operation counts, over
    every pass the spec makes (probabilities averaged over the passes, operations summed).
    ``skip_air``: run only :func:`slices_to_run`; the others get probability 0 (background).
    ``advance(n)`` is told after each step how many slices it has dealt with (a progress bar's
    update; skipped slices count as dealt with at the end). A sliding-window spec runs
    :func:`run_volume` instead (``view`` and ``skip_air`` do not apply)."""
    if spec.window is not None:
        return run_volume(engine, spec, image, view, advance)
    seq = to_view(image, view)  # a view of the array: slices are copied one batch at a time
    t_total = seq.shape[0]
    counted = engine.counting
    ops = dict.fromkeys(spec.ops if counted else (), 0.0)
    acts = dict.fromkeys(spec.acts if counted else (), 0.0)
    mems = dict.fromkeys(spec.mems if counted else (), 0.0)
    # NeuroBench's convention: the first step writes every membrane (initialisation), later
    # steps count the membranes that changed
    mem_numel = {n: float(np.prod(spec.activation_shapes[n])) for n in spec.mems}
    prob = np.zeros((t_total, 3) + seq.shape[2:], dtype=np.float32)
    run = 0
    start = time.perf_counter()
    for order in pass_orders(spec, seq, skip_air):
        logits = np.full_like(prob, -np.inf)
        first = True
        for idx, _, out in feed_back(engine, spec, seq, order=order):
            logits[idx] = out[LOGITS]
            if advance is not None:
                advance(len(idx))
            for n in ops:
                ops[n] += float(out[ops_output(n)].sum())
            for n in acts:
                acts[n] += float(out[act_output(n)].sum())
            for n in mems:
                mems[n] += mem_numel[n] if first else float(out[mem_output(n)].sum())
            first = False
        prob += sigmoid(logits)
        run += len(order)
        if advance is not None and len(order) < t_total:
            advance(t_total - len(order))
    seconds = time.perf_counter() - start
    if spec.passes > 1:
        prob /= np.float32(spec.passes)
    return ViewResult(view, from_view(prob, view), seconds, run, counted, ops, acts, mems,
                      skipped=t_total * spec.passes - run)


def run_volume(engine: Engine, spec: ViewSpec, image: np.ndarray, name: str,
               advance: Callable[[int], object] | None = None) -> ViewResult:
    """A volume model over the (4, X, Y, Z) model-space image by sliding window, every mirrored
    copy of the spec: their mean probabilities, and their spread as the uncertainty. ``slices``
    counts the engine calls (patches x copies): the unit its layers' dense MACs are per."""
    assert spec.window is not None
    start = time.perf_counter()
    members = mirrored_predictions(engine, spec.window, image, advance)
    seconds = time.perf_counter() - start
    mean = fuse(members)
    return ViewResult(name, mean, seconds, steps_per_case(image.shape[1:], spec.window),
                      spread=spread(members, mean) if len(members) > 1 else None)


def steps_for(spec: ViewSpec, image: np.ndarray, view: str) -> int:
    """How many units of progress :func:`run_view` reports for this image: slices or patches."""
    if spec.window is not None:
        return steps_per_case(image.shape[1:], spec.window)
    return image.shape[1 + VIEWS[view]] * spec.passes
