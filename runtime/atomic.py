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

from spikeseg.runtime.errors import InputError

PARTIAL = ".partial-"
#: Room a temporary name needs beside the destination's name (dot, random part, ".part", ".nii.gz").
_TEMP_ROOM = 32
#: Longest file name most filesystems allow (NAME_MAX).
NAME_MAX = 255


def _umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds.

    ``suffix`` keeps extensions that writers sniff (nibabel needs ``.nii.gz``).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name is cut short where the destination's own name is near NAME_MAX
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name[:NAME_MAX - _TEMP_ROOM]}.", suffix=f".part{suffix}",
                               dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; results follow the umask
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
    if dest.name in ("", ".", "..") or dest.name.startswith("."):
        raise InputError(dest, "refusing to replace it: not a plain folder name")
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise InputError(dest, "refusing to replace it: a symbolic link or a file, not a folder this command made")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}{PARTIAL}", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: a clinic's group could not read results
    old: Path | None = None
    try:
        yield tmp
        if dest.exists():  # move the old folder aside first: only ever dest itself is removed
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def sweep_partials(parent: str | Path, name: str) -> int:
    """Remove what a killed writer of ``parent/name`` left (``.name.partial-*``, ``.name.old-*``).

    Call it only while holding ``name``'s lock: another live process may be writing it."""
    removed = 0
    for p in Path(parent).glob(f".{name}.*"):
        if p.is_dir() and not p.is_symlink() and (p.name.startswith(f".{name}{PARTIAL}")
                                                  or p.name.startswith(f".{name}.old-")):
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
    return removed
