"""Helpers for running the CLI the way a user does: in this process, or in a subprocess where
the test is about what the process imports or needs one of its own."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the tests' reference files (an official metrics configuration, pinned exported outputs)
DATA = Path(__file__).resolve().parent / "data"
T = TypeVar("T")

#: What a runtime-only install does not have: torch and every training or export package, and
#: the ``prepare`` extra's SimpleITK and pydicom.
TRAINING_ONLY = ("torch", "snntorch", "spikingjelly", "nncf", "onnx", "nilearn", "matplotlib", "SimpleITK", "pydicom")

# Makes the blocked packages (and anything under them) unimportable, then runs the CLI.
_BLOCKING = """
import sys
BLOCKED = {blocked!r}
def _blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)
class _Block:
    def find_spec(self, name, path=None, target=None):
        if _blocked(name):
            raise ImportError(name + " is blocked in this test: the runtime must not need it")
        return None
sys.meta_path.insert(0, _Block())
from spikeseg.cli import main
rc = main(sys.argv[1:])
assert not any(_blocked(m) for m in sys.modules), "a training-only package was imported"
sys.exit(rc)
"""


def run_cli(*args: str, block_torch: bool = False, allow: tuple[str, ...] = (),
            timeout: float = 600, isolated: bool = False) -> subprocess.CompletedProcess:
    """The CLI with ``args``: its exit status, stdout and stderr.

    ``block_torch``: in a subprocess, as a runtime-only install would run, without
    :data:`TRAINING_ONLY` (less what ``allow`` names: the phantom generator needs nilearn, not
    torch). ``isolated``: in a fresh subprocess (a test about exactness across processes).
    Otherwise in this process (:func:`_in_process`): a subprocess spends about 2 s of CPU importing
    torch before it does anything, and the suite runs a hundred of them."""
    if not (block_torch or isolated):
        return _in_process([str(a) for a in args])
    blocked = tuple(b for b in TRAINING_ONLY if b not in allow)
    code = (_BLOCKING.format(blocked=blocked) if block_torch
            else "import sys; from spikeseg.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def _in_process(args: list[str]) -> subprocess.CompletedProcess:
    """``spikeseg args`` in this process, as a subprocess would report it: output captured, an
    uncaught exception printed as a traceback with exit status 1, and torch's process-wide settings
    the CLI may change (threads, flushing subnormals) put back to a fresh process's."""
    import torch  # once per worker: its thread count before the command is what is put back

    from spikeseg.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(args)
        except SystemExit as exc:  # argparse refusals, sys.exit("message")
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
        except Exception:  # noqa: BLE001 - reported as the interpreter would
            traceback.print_exc()
            rc = 1
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def exported_sliding_logits(model, window, image, tmp: Path):  # noqa: ANN001, ANN201 (torch types)
    """A volume model's whole sliding-window logits from torch, and from its exported FP32 graph
    through ONNX Runtime and OpenVINO: (torch's, {backend: theirs}), for torch-vs-exported tests."""
    from spikeseg.export.graphs import export_volume_onnx, onnx_to_openvino
    from spikeseg.snn.graphs import TorchEngine
    from spikeseg.runtime.bundle import ModelFile
    from spikeseg.runtime.inference import OrtEngine, OvEngine
    from spikeseg.runtime.sliding import blended_logits

    export_volume_onnx(model, window, tuple(image.shape[1:]), tmp / "m.onnx")
    onnx_to_openvino(tmp / "m.onnx", tmp / "m.xml")
    engines = (OrtEngine(ModelFile.local(tmp / "m.onnx"), "fp32", 2), OvEngine(ModelFile.local(tmp / "m.xml"), "fp32", 2))
    return blended_logits(TorchEngine(model), window, image), {e.backend: blended_logits(e, window, image)
                                                              for e in engines}


def shared(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], T]) -> T:
    """``build(folder)`` once per test session, whichever process asks first (a worker, or the
    controller's prebuild: :func:`build_shared`); the others wait on a file lock and read the
    result back (pickled). pytest-xdist's ``--dist loadgroup`` cannot keep a fixture's tests on one
    worker under pytest 9 (it renames node ids through an attribute pytest 9 no longer reads), and
    each worker building its own copy of the bundles doubled their cost."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: nothing to share
        return build(tmp_path_factory.mktemp(name))
    return build_shared(shared_root(base.parent, name), build)


def shared_root(session_base: Path, name: str) -> Path:
    """Where a shared fixture lives: beside the workers' own temporary folders."""
    return session_base / f"shared-{name}"


def build_shared(root: Path, build: Callable[[Path], T]) -> T:
    """``build(root / "data")`` unless another process did it already, under ``root``'s lock."""
    from filelock import FileLock

    with FileLock(f"{root}.lock"):
        result = root / "result.pickle"
        if not result.is_file():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            value = build(root / "data")
            result.write_bytes(pickle.dumps(value))
            return value
    return pickle.loads(result.read_bytes())
