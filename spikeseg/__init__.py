"""spikeseg: brain-tumour segmentation on low-power hardware with spiking and quantised networks.

The one import package this distribution installs. Its sub-packages are the repository's
top-level folders, mapped by ``setup.cfg`` (``package_dir``), so that nothing in site-packages
carries a generic name such as ``runtime`` or ``training``:

- ``spikeseg.runtime``    torch-free: case I/O, preprocessing, bundles, inference, segment, CLI
- ``spikeseg.snn``        the Spiking U-Seg-Net, its neurons and its twins (torch)
- ``spikeseg.training``   FPTT and the trainer (torch)
- ``spikeseg.export``     ONNX / OpenVINO export, INT8 quantisation, bundles, board packages
- ``spikeseg.benchmarks`` benchmarks and the demo
"""

__version__ = "0.3.0"  # 0.3: QC verdicts, the Python API, phantom families (CHANGELOG.md)

#: The Python API (torch-free), imported on first use so that ``import spikeseg`` and the CLI stay
#: quick: ``spikeseg.segment(bundle, case, out)``, ``spikeseg.Predictor``, ``spikeseg.SegmentOptions``.
_API = {"segment": "spikeseg.runtime.predictor", "Predictor": "spikeseg.runtime.predictor",
        "Prediction": "spikeseg.runtime.predictor", "SegmentOptions": "spikeseg.runtime.options",
        "InputError": "spikeseg.runtime.errors"}
__all__ = ["__version__", *_API]


def __getattr__(name: str):  # PEP 562: the API's modules load when first asked for
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'spikeseg' has no attribute {name!r}")
