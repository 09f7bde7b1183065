"""Atomic file writes: a crash or a bad case never leaves a half-written output behind.

Everything spikeseg writes goes to a temporary name in the destination folder and is
renamed into place (``os.replace`` is atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds.

    ``suffix`` keeps extensions that writers sniff (nibabel needs ``.nii.gz``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f".part{suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def nifti_suffix(dest: str | Path) -> str:
    """The extension nibabel needs on the temporary file to pick the right writer."""
    name = str(dest)
    return ".nii.gz" if name.endswith(".nii.gz") else ".nii"


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Build a folder under a hidden temporary name beside ``dest``; on success it replaces ``dest``.

    Callers check ``--overwrite`` before they start; a failure leaves neither a partial folder
    nor a damaged old one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
