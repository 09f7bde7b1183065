"""``spikeseg prepare``: scanner data (DICOM series or NIfTI files with any names) to a BraTS case.

Optional (``pip install 'spikeseg[prepare]'``: SimpleITK and pydicom); the runtime never imports
it. Modules: :mod:`.series` finds and names the input series, :mod:`.volumes` reads them,
:mod:`.register` co-registers them and maps them to the template, :mod:`.brain` extracts the
brain, :mod:`.pipeline` runs the steps and writes the case.
"""

#: ``from spikeseg.prepare import prepare``: loaded on first use, so that the CLI's registration
#: (which imports this package) needs neither SimpleITK nor pydicom.
_API = {"prepare": "spikeseg.prepare.pipeline", "PrepareOptions": "spikeseg.prepare.pipeline",
        "Prepared": "spikeseg.prepare.pipeline"}
__all__ = list(_API)


def __getattr__(name: str):  # PEP 562
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'spikeseg.prepare' has no attribute {name!r}")
