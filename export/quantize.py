"""INT8 post-training quantisation: NNCF on the OpenVINO model, static QDQ in ONNX Runtime.

Calibration uses real slices: for the SNN, whole slice sequences run through the FP32 model
with the membrane states fed back, so the quantiser sees the membrane values the network
really meets (NNCF's post-training quantisation wants calibration data representative of
inference, and a stateful step's inputs include its states). Only convolutions and
deconvolutions are quantised: the membrane arithmetic (leak, reset) and the operation counters
stay in f32, which keeps the spike threshold test exact and the counts integral.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spikeseg.runtime.bundle_spec import INPUT, ViewSpec, WindowSpec
from spikeseg.runtime.inference import Engine, feed_back, slices_to_run
from spikeseg.runtime.preprocess import to_view
from spikeseg.runtime.sliding import pad_to_patch, patch_boxes, patch_feed

CONV_TYPES_ORT = ["Conv", "ConvTranspose"]
#: a volume model's patches are ~60x a slice (4 x 64^3 floats, 4 MB): at most this many
MAX_PATCH_ITEMS = 48


def weight_name(module_path: str) -> str:
    """Exported graphs name a layer's weight after its module (node names are not stable)."""
    return f"model.{module_path}.weight"


def calibration_feeds(engine: Engine, spec: ViewSpec, images: Sequence[np.ndarray], view: str,
                      max_items: int = 300, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Per-step input dicts (slice + fed-back states) from real volumes, ``max_items`` steps
    drawn evenly at random from all the steps the runtime would run. Only the drawn steps are
    kept (their states copied: an engine's outputs may be its own buffers): keeping every step
    held 42 MB of membranes per slice at the paper's scale, 8 GB for one view of one case."""
    if spec.window is not None:
        return patch_feeds(spec.window, images, min(max_items, MAX_PATCH_ITEMS), seed)
    seqs = [to_view(image, view) for image in images]
    orders = [slices_to_run(spec, seq) for seq in seqs]  # the slices the runtime runs: no calibrating on air
    total = sum(len(o) for o in orders)
    keep = set(range(total))
    if total > max_items:
        keep = set(np.random.default_rng(seed).choice(total, max_items, replace=False).tolist())
    items: list[dict[str, np.ndarray]] = []
    step = 0
    for seq, order in zip(seqs, orders):
        if spec.stateful:
            for _, feeds, _ in feed_back(engine, spec, seq, order=order):
                if step in keep:
                    items.append({k: np.array(v, copy=True) for k, v in feeds.items()})
                step += 1
        else:  # nothing to feed back: the slices alone, no need to run the model
            for t in order:
                if step in keep:
                    items.append({INPUT: np.ascontiguousarray(seq[t:t + 1], dtype=np.float32)})
                step += 1
    return items


def patch_feeds(window: WindowSpec, images: Sequence[np.ndarray], max_items: int,
                seed: int = 0) -> list[dict[str, np.ndarray]]:
    """A volume model's calibration: ``max_items`` patches drawn at random from the sliding-window
    grids of the images (the patches the runtime runs), patches of pure air left out."""
    padded = [pad_to_patch(image, window.patch) for image in images]
    brain = [(image, box) for image in padded for box in patch_boxes(image.shape[1:], window)
             if np.any(image[(slice(None),) + box])]
    if not brain:
        return []
    chosen = np.random.default_rng(seed).choice(len(brain), min(max_items, len(brain)), replace=False)
    return [{INPUT: patch_feed(*brain[k])} for k in sorted(chosen.tolist())]


def quantize_openvino(fp32_xml: Path, out_xml: Path, feeds: list[dict[str, np.ndarray]],
                      ignored_layers: list[str] | None = None) -> dict[str, Any]:
    """NNCF PTQ on the OpenVINO IR; ``ignored_layers`` (module paths) stay float."""
    import nncf
    import openvino as ov

    logging.getLogger("nncf").setLevel(logging.WARNING)  # its INFO lists every skipped node
    model = ov.Core().read_model(str(fp32_xml))
    # comparisons too: NNCF would put FakeQuantize on both sides of the membrane-update counter's
    # Equal, and two quantisers with different ranges never compare equal (every membrane counted)
    keep_float = ["Multiply", "Add", "Subtract", "ReduceSum", "MatMul", "Equal", "NotEqual", "GreaterEqual", "Greater"]
    weights = {weight_name(m) for m in ignored_layers or []}
    names = [op.get_friendly_name() for op in model.get_ordered_ops()
             if op.get_type_name() in ("Convolution", "ConvolutionBackpropData")
             and op.input(1).get_source_output().get_node().get_friendly_name() in weights]
    scope = nncf.IgnoredScope(types=keep_float, names=names, validate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), ignored_scope=scope,
                          preset=nncf.QuantizationPreset.MIXED)
    ov.save_model(q, str(out_xml), compress_to_fp16=False)
    return {"tool": f"nncf {nncf.__version__}", "method": "post-training (min-max, mixed preset)",
            "calibration_items": len(feeds), "kept_float_types": keep_float,
            "kept_float_layers": ignored_layers or []}


class _Reader:
    """onnxruntime CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """Drop ORT's advice to run its pre-processing (shape inference, graph fusion), printed twice
    per model on every export: we quantise the exporter's constant-folded graph as it is, and the
    accuracy check after quantisation is what decides whether the result is kept."""
    return not record.getMessage().startswith("Please consider")


def quantize_onnxruntime(fp32_onnx: Path, out_onnx: Path, feeds: list[dict[str, np.ndarray]],
                         ignored_layers: list[str] | None = None) -> dict[str, Any]:
    """Static QDQ quantisation of the convs (per-channel int8 weights, uint8 activations);
    ``ignored_layers`` (module paths) stay float."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    reader = type("Reader", (_Reader, CalibrationDataReader), {})(feeds)
    weights = {weight_name(m) for m in ignored_layers or []}
    graph = onnx.load(str(fp32_onnx), load_external_data=False).graph
    exclude = [n.name for n in graph.node if n.op_type in CONV_TYPES_ORT and n.input[1] in weights]
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_static(str(fp32_onnx), str(out_onnx), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=CONV_TYPES_ORT, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude)
    finally:
        root.removeFilter(_no_preprocessing_advice)
    return {"tool": f"onnxruntime {onnxruntime.__version__}", "method": "static QDQ (min-max), per-channel",
            "calibration_items": len(feeds), "quantised_op_types": CONV_TYPES_ORT,
            "kept_float_layers": ignored_layers or []}
