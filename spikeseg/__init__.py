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

__version__ = "0.2.0"  # 0.2: one spikeseg namespace, bundle schema 3
