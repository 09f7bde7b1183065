"""``spikeseg package``: a self-contained folder (or tarball) to copy to an embedded board.

Contents::

    app/spikeseg/       the torch-free runtime's source: spikeseg/{__init__,cli}.py and spikeseg/runtime/
                        (the only code that runs on the board)
    bundle/             the deployment bundle (ONNX / OpenVINO IR + manifest with checksums)
    wheels/             the runtime's pinned wheels for the target (pip download --platform ...)
    requirements.txt    the pins, installed with --no-index from wheels/
    install.sh          makes venv/ on the board with no network
    spikeseg-run        launcher: spikeseg-run CASE OUT [segment options]
    hardware_profile.json   the profile the board's reports are estimated against
    README.board.md     the steps on the board
    package.json        target, minimum glibc and Python, and every file's sha256

Wheels are checked against the target before anything is written: a wheel built for another
machine, another Python, or a newer glibc than the target declares is refused.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spikeseg.runtime import __version__
from spikeseg.runtime.atomic import atomic_dir, write_json, write_text
from spikeseg.runtime.bundle import MANIFEST, Bundle, load_bundle, read_verified, sha256_file
from spikeseg.runtime.energy import builtin_profiles
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.outputs import check_apart, check_replaceable, json_marker

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    name: str
    machine: str
    platforms: tuple[str, ...]
    max_glibc: tuple[int, int]     # newest glibc a wheel may need (the oldest board we promise)
    profile: str


TARGETS = {
    "linux-aarch64": Target("linux-aarch64", "aarch64",
                            ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64",
                             "manylinux_2_35_aarch64"),
                            (2, 36),  # Debian / Raspberry Pi OS bookworm
                            "rpi4-cortex-a72"),
}
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<ver>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$")
#: What ``--python`` may be: it is written into the board's install script.
_PYTHON = re.compile(r"^3\.[0-9]{1,2}\Z")
#: The file every package holds, and the keys that tell it from an npm project's package.json.
PACKAGE_JSON = "package.json"
is_package = json_marker(PACKAGE_JSON, ("spikeseg_version", "target", "files"))
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}


def copy_runtime_source(app: Path) -> None:
    """The board's code: the ``spikeseg`` dispatcher and ``spikeseg.runtime``, nothing else
    (no training, export or benchmark code)."""
    import spikeseg
    import spikeseg.runtime

    (app / "spikeseg").mkdir(parents=True)
    root = Path(spikeseg.__file__).parent
    for name in ("__init__.py", "__main__.py", "cli.py"):
        shutil.copy2(root / name, app / "spikeseg" / name)
    shutil.copytree(Path(spikeseg.runtime.__file__).parent, app / "spikeseg" / "runtime",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


#: The runtime's exact pins, shipped inside the package (``spikeseg.runtime``'s data) so that
#: ``spikeseg package`` works from an installed wheel, where no setup.cfg or constraints exist.
RUNTIME_PINS = "runtime_pins.txt"


def runtime_requirements() -> list[str]:
    """The runtime layer's exact pins, as the installed package ships them: a board gets exactly
    what CI ran, never whatever the registry has that day."""
    import spikeseg.runtime

    path = Path(spikeseg.runtime.__file__).parent / RUNTIME_PINS
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise InputError(path, f"the runtime's pins are missing from this install ({exc.strerror or exc})") from exc
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def checkout_pins(repo: Path = REPO) -> list[str]:
    """What :data:`RUNTIME_PINS` must hold, from a checkout: the packages of setup.cfg's
    ``install_requires`` (ranges), each at the version ``requirements/constraints.txt`` tests."""
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    names = [re.split(r"[<>=!~;\[ ]", r.strip(), maxsplit=1)[0]
             for r in cfg["options"]["install_requires"].strip().splitlines() if r.strip()]
    pins = {}
    for line in (repo / "requirements" / "constraints.txt").read_text().splitlines():
        name, sep, ver = line.strip().partition("==")
        if sep:
            pins[_normal(name)] = f"{name}=={ver}"
    missing = [n for n in names if _normal(n) not in pins]
    if missing:
        raise InputError(repo / "requirements" / "constraints.txt", f"no pin for the runtime's {missing}")
    return [pins[_normal(n)] for n in names]


def write_checkout_pins(repo: Path = REPO) -> Path:
    """``make pins``: :data:`RUNTIME_PINS` regenerated from the checkout."""
    dest = repo / "runtime" / RUNTIME_PINS
    write_text(dest, "# The runtime's exact pins (setup.cfg install_requires at requirements/constraints.txt's "
                     "versions);\n# tests/test_package.py fails when they drift apart. Regenerate: make pins\n"
               + "".join(f"{p}\n" for p in checkout_pins(repo)))
    return dest


def _normal(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_glibc(platform_tags: str, machine: str) -> tuple[int, int] | None:
    """Lowest glibc any of a wheel's platform tags needs on ``machine``; None if none fits."""
    best = None
    for tag in platform_tags.split("."):
        if tag == "any":
            return (0, 0)
        m = _MANYLINUX.match(tag)
        if m:
            version, arch = (int(m.group(1)), int(m.group(2))), m.group(3)
        else:
            base, _, arch = tag.partition("_")  # manylinux2014_aarch64
            if base not in _LEGACY:
                continue
            version = _LEGACY[base]
        if arch == machine and (best is None or version < best):
            best = version
    return best


def check_wheels(wheels: list[Path], target: Target, python: str) -> dict[str, Any]:
    """Refuse wheels that cannot install on the target; return the glibc the set needs."""
    cp = "cp" + python.replace(".", "")
    need = (0, 0)
    for w in wheels:
        m = _WHEEL.match(w.name)
        if not m:
            raise InputError(w, "not a wheel file name")
        pys = m.group("py").split(".")
        if not any(p in (cp, "py3", "py2.py3") or (p.startswith("cp3") and m.group("abi") == "abi3") for p in pys):
            raise InputError(w, f"built for {m.group('py')}, not Python {python}")
        glibc = wheel_glibc(m.group("plat"), target.machine)
        if glibc is None:
            raise InputError(w, f"platform {m.group('plat')} does not run on {target.name}")
        if glibc > target.max_glibc:
            raise InputError(w, f"needs glibc {glibc[0]}.{glibc[1]}, newer than the target's "
                                f"{target.max_glibc[0]}.{target.max_glibc[1]}")
        need = max(need, glibc)
    return {"min_glibc": f"{need[0]}.{need[1]}", "python": python}


def check_requirements_present(wheels: list[Path], requirements: list[str]) -> None:
    """Every pinned runtime requirement has its wheel, at the pinned version: an empty or partial
    wheels folder would make a package that fails only on the board, with no network to mend it."""
    have = set()
    for w in wheels:
        m = _WHEEL.match(w.name)
        if m:
            have.add((_normal(m.group("name")), m.group("ver")))
    missing = [r for r in requirements if (_normal(r.split("==")[0]), r.split("==")[1]) not in have]
    if missing:
        raise InputError(None, f"no target wheel for {', '.join(missing)} among the {len(wheels)} wheels given: "
                               "the board could not install the runtime (download them with pip download "
                               "--platform ..., or leave out --wheels)")


def copy_bundle(bundle: Bundle, dest: Path) -> None:
    """Exactly the files the manifest lists, each verified against its sha256 as it is copied,
    and the manifest: never the rest of the folder (an unlisted ``notes.txt`` linking to a secret
    once shipped the secret), never through a link."""
    dest.mkdir()
    manifest = (bundle.root / MANIFEST).read_bytes()
    if hashlib.sha256(manifest).hexdigest() != bundle.checksum:
        raise InputError(bundle.root / MANIFEST, "changed while the package was being made")
    (dest / MANIFEST).write_bytes(manifest)
    for spec in bundle.specs.values():
        for model in spec.models:
            for entry in model.files():
                target = dest / entry.file
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(read_verified(bundle.root, entry))


def download_wheels(dest: Path, target: Target, python: str, requirements: list[str]) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for p in target.platforms:
        cmd += ["--platform", p]
    r = subprocess.run(cmd + requirements, capture_output=True, text=True)
    if r.returncode != 0:
        raise InputError(None, f"pip download for {target.name} failed: {r.stderr.strip()[-800:]}")
    return sorted(dest.glob("*.whl"))


# Every value formatted into a script below is checked against a strict pattern and shell-quoted
# (shlex.quote): the board runs these scripts.
_INSTALL = """#!/bin/sh
# Installs the spikeseg runtime into ./venv on the board, with no network.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${{PYTHON:-python3}}
want={python}
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = "$want" ] || {{ echo "install.sh: need Python $want, found $have ($PY); set PYTHON=..." >&2; exit 1; }}
machine={machine}
arch=$(uname -m)
[ "$arch" = "$machine" ] || {{ echo "install.sh: this package is for $machine, this board is $arch" >&2; exit 1; }}
"$PY" -m venv "$HERE/venv"
"$HERE/venv/bin/pip" install --quiet --no-index --find-links "$HERE/wheels" -r "$HERE/requirements.txt"
echo "installed; run: $HERE/spikeseg-run CASE_FOLDER OUT_FOLDER"
"""

_LAUNCHER = """#!/bin/sh
# spikeseg-run CASE_OR_COHORT OUT [segment options]: the bundle beside this script, ONNX Runtime by default;
# threads: the board's physical cores, or SPIKESEG_THREADS.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || {{ echo "usage: spikeseg-run CASE_OR_COHORT OUT [--backend openvino] [--precision int8] ..." >&2; exit 2; }}
case_dir=$1; out=$2; shift 2
PYTHONPATH="$HERE/app" exec "$HERE/venv/bin/python" -m spikeseg.cli segment "$HERE/bundle" "$case_dir" "$out" \\
    --backend {backend} ${{SPIKESEG_THREADS:+--threads "$SPIKESEG_THREADS"}} "$@"
"""

_BOARD_README = """# spikeseg runtime for {target}

1. Copy this folder (or the tarball) to the board and unpack it.
2. `./install.sh` (Python {python} and glibc >= {glibc} needed; no network used).
3. `./spikeseg-run /path/to/BraTS_case out/` segments a case folder (or a folder of cases);
   add `--precision int8`, `--backend openvino`, `--png` as needed (`spikeseg-run CASE OUT --help`).
4. Reports in `out/<case>/<case>_report.json` estimate energy for the `{profile}` profile among others
   (`hardware_profile.json`); latencies there are measured on the board itself.

OpenVINO on ARM picks f16 where the CPU has it unless told otherwise; spikeseg always sets f32 and
records the precision in each report. Check the package with `sha256sum -c` against package.json.
"""


def check_script_values(python: str, backend: str) -> None:
    """Values that reach the board's shell scripts, refused unless they are what they claim."""
    if not isinstance(python, str) or not _PYTHON.match(python):
        raise InputError(None, f"--python {python!r}: expected a Python version such as 3.11")
    if backend not in ("onnxruntime", "openvino"):
        raise InputError(None, f"--backend {backend!r}: expected onnxruntime or openvino")


def build_package(bundle_path: Path, target_name: str, out: Path, python: str = "3.11", tar: bool = False,
                  wheels_from: Path | None = None, overwrite: bool = False, backend: str = "onnxruntime") -> Path:
    """The package folder ``out`` (and ``out.tar.gz`` with ``tar``). Refused before any work: an
    ``out`` that overlaps the bundle or the wheels folder, an existing ``out`` without
    ``overwrite`` or that is not a package (see :mod:`spikeseg.runtime.outputs`)."""
    if target_name not in TARGETS:
        raise InputError(None, f"unknown target {target_name!r}; have {sorted(TARGETS)}")
    target = TARGETS[target_name]
    check_script_values(python, backend)
    out = Path(out)
    check_apart(out, [Path(bundle_path)] + ([Path(wheels_from)] if wheels_from is not None else []))
    check_replaceable(out, overwrite, is_package, "package folder")
    archive = out.with_name(out.name + ".tar.gz")
    if tar:
        check_apart(archive, [Path(bundle_path)] + ([Path(wheels_from)] if wheels_from is not None else []))
        check_replaceable(archive, overwrite, _is_package_archive, "package tarball")
    bundle = load_bundle(bundle_path)
    reqs = runtime_requirements()
    if wheels_from is not None:
        given = sorted(Path(wheels_from).glob("*.whl"))
        links = [w for w in given if w.is_symlink() or not w.is_file()]
        if links:
            raise InputError(links[0], "is a link or not a regular file: wheels are copied as files only")
        fit = check_wheels(given, target, python)  # before anything is written
        check_requirements_present(given, reqs)
    with atomic_dir(out) as tmp:
        if wheels_from is not None:
            (tmp / "wheels").mkdir()
            for w in given:
                shutil.copyfile(w, tmp / "wheels" / w.name)
        else:
            wheels = download_wheels(tmp / "wheels", target, python, reqs)
            fit = check_wheels(wheels, target, python)
            check_requirements_present(wheels, reqs)
        copy_runtime_source(tmp / "app")
        copy_bundle(bundle, tmp / "bundle")
        write_text(tmp / "requirements.txt", "\n".join(reqs) + "\n")
        write_text(tmp / "install.sh", _INSTALL.format(python=shlex.quote(python), machine=shlex.quote(target.machine)))
        write_text(tmp / "spikeseg-run", _LAUNCHER.format(backend=shlex.quote(backend)))
        for script in ("install.sh", "spikeseg-run"):
            os.chmod(tmp / script, 0o755)
        write_json(tmp / "hardware_profile.json", {target.profile: builtin_profiles()[target.profile]})
        write_text(tmp / "README.board.md", _BOARD_README.format(target=target.name, python=python,
                                                                 glibc=fit["min_glibc"], profile=target.profile))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / PACKAGE_JSON, {
            "spikeseg_version": __version__, "target": target.name, "machine": target.machine,
            "python": python, "min_glibc": fit["min_glibc"], "bundle_sha256": bundle.checksum,
            "backend": backend, "requirements": reqs,
            "files": [{"path": p.relative_to(tmp).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                      for p in files]})
    if tar:
        part = archive.with_name(archive.name + ".part")
        with tarfile.open(part, "w:gz") as t:
            t.add(out, arcname=out.name)
        os.replace(part, archive)
        return archive
    return out


def _is_package_archive(path: Path) -> bool:
    """A tarball ``spikeseg package --tar`` wrote: a gzip tar whose first member is the package
    folder's ``package.json`` or the folder itself (read from the index only, nothing extracted)."""
    if not path.is_file():
        return False
    try:
        with tarfile.open(path, "r:gz") as t:
            for _, member in zip(range(10_000), t):
                if member.name.endswith("/" + PACKAGE_JSON) and member.name.count("/") == 1:
                    return True
    except (OSError, tarfile.TarError, EOFError):
        return False
    return False
