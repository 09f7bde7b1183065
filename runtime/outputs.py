"""The two rules every command that writes follows, in one place, so a user's data is safe
whichever command is called:

- an output never equals, contains or sits inside an input (``spikeseg package --out bundles/``
  for ``bundles/twin`` once deleted every sibling bundle);
- ``--overwrite`` only ever replaces what that command made, recognised by the file it always
  writes (a bundle's ``manifest.json``, a package's ``package.json``, a metrics CSV's header),
  never an arbitrary folder or file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

from spikeseg.runtime.errors import InputError


def inside(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or below it (both resolved: links and ``..`` cannot hide an overlap)."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or b in a.parents


def check_apart(out: Path, inputs: Iterable[Path]) -> None:
    """Refuse an output path that equals, contains or sits inside any of ``inputs``."""
    for inp in inputs:
        if inside(out, inp):
            where = "is" if Path(out).resolve() == Path(inp).resolve() else "is inside"
            raise InputError(out, f"output {where} the input {inp}: choose an output outside the input data")
        if inside(inp, out):
            raise InputError(out, f"output holds the input {inp}: choose an output outside the input data")


def check_replaceable(dest: Path, overwrite: bool, made_here: Callable[[Path], bool], what: str) -> None:
    """Before any work: ``dest`` may be written if it does not exist, or with ``overwrite`` if it
    is a ``what`` this command made (``made_here``); a link is never replaced."""
    dest = Path(dest)
    if not (dest.exists() or dest.is_symlink()):
        return
    if not overwrite:
        raise InputError(dest, "exists; pass --overwrite to replace it")
    if dest.is_symlink():
        raise InputError(dest, "is a symbolic link; refusing to replace it")
    if not made_here(dest):
        raise InputError(dest, f"exists and is not a {what} made by spikeseg; refusing to replace it "
                               "(--overwrite only replaces what the same command wrote): choose another output")


def json_marker(name: str, keys: tuple[str, ...]) -> Callable[[Path], bool]:
    """A test for a folder holding the JSON file ``name`` with ``keys``: how a command recognises
    a folder it wrote (an npm project's ``package.json`` lacks a package's keys)."""
    def made_here(folder: Path) -> bool:
        path = folder / name
        if not folder.is_dir() or path.is_symlink() or not path.is_file():
            return False
        try:
            if path.stat().st_size > 64 << 20:
                return False
            data = json.loads(path.read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)
    return made_here
