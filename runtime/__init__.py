"""spikeseg runtime: the torch-free layer every other part of spikeseg builds on.

It holds what a point-of-care install needs (case I/O, preprocessing, metrics, bundles,
inference on ONNX Runtime / OpenVINO) and nothing that imports torch, so that
``pip install spikeseg`` stays small. ``training``, ``snn``, ``export`` and ``benchmarks``
import from here, never the other way round.
"""

from spikeseg import __version__

__all__ = ["__version__"]
