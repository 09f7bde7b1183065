"""Helpers for running the CLI the way a user does, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Makes torch (and anything under it) unimportable, then runs the spikeseg CLI.
_NO_TORCH = """
import sys
class _BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test: the runtime must not need it")
        return None
sys.meta_path.insert(0, _BlockTorch())
from spikeseg.cli import main
rc = main(sys.argv[1:])
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
sys.exit(rc)
"""


def run_cli(*args: str, block_torch: bool = False, timeout: float = 600) -> subprocess.CompletedProcess:
    code = _NO_TORCH if block_torch else "import sys; from spikeseg.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)
