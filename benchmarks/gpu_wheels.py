"""``make gpu-wheels``: the wheels the GPU check needs beyond a GPU machine's image, for a machine
with no network (the lent H100 / H200: Python 3.12, CUDA torch, pandas, requests and pytest
already there; no nibabel or nilearn).

Each package is pinned at its version in ``requirements/constraints.txt`` and downloaded with
``--no-deps`` for the target's Python and manylinux tags; spikeseg's own wheel is built from
the tree beside them. Never torch: the GPU machine's own CUDA build is the one to use.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

#: Beyond the GPU image: spikeseg.runtime reads NIfTI (nibabel), the phantoms need the MNI
#: template nilearn ships; pytz and tzdata are pandas's, in case the image's pandas lacks them.
PACKAGES = ("nibabel", "nilearn", "pytz", "tzdata")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
REPO = Path(__file__).resolve().parents[1]


def pins(constraints: Path) -> dict[str, str]:
    """name (PEP 503 normalised) -> the pinned requirement."""
    out = {}
    for line in constraints.read_text().splitlines():
        name, sep, ver = line.strip().partition("==")
        if sep:
            out[re.sub(r"[-_.]+", "-", name).lower()] = f"{name}=={ver}"
    return out


def requirements(constraints: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    pinned = pins(constraints)
    missing = [p for p in packages if p not in pinned]
    if missing:
        raise SystemExit(f"{constraints}: no pin for {missing}")
    reqs = [pinned[p] for p in packages]
    if any(r.lower().startswith("torch") for r in reqs):
        raise SystemExit("gpu-wheels never carries torch: the GPU machine's CUDA build is the one to use")
    return reqs


def drop_stale(dest: Path, reqs: list[str]) -> None:
    """Remove earlier wheels of these packages at other versions (two versions of one package
    stop the install there); other files are left alone."""
    wanted = {re.sub(r"[-_.]+", "-", r.split("==")[0]).lower(): r.split("==")[1] for r in reqs}
    for w in dest.glob("*.whl"):
        name, _, rest = w.name.partition("-")
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in wanted and not rest.startswith(wanted[key] + "-"):
            w.unlink()


def download(dest: Path, python: str, reqs: list[str]) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    r = subprocess.run(cmd + reqs, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"pip download failed: {r.stderr.strip()[-1500:]}")


#: Left out of the copy spikeseg's wheel is built from: a stale build/lib would pack deleted files.
_NOT_SOURCE = (".git", ".venv", "build", "dist", "demo", "*.egg-info", ".gpu-*", "gpu-check", "__pycache__", "runs")


def build_own_wheel(dest: Path) -> Path:
    """spikeseg's wheel from a clean copy of the working tree (what is checked out now)."""
    import shutil
    import tempfile

    for old in dest.glob("spikeseg-*.whl"):  # only ever our own earlier wheel
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "spikeseg"
        shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
        r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--no-build-isolation", str(src), "-w", str(dest.resolve())],
                           capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"building spikeseg's wheel failed: {r.stderr.strip()[-1500:]}")
    return next(dest.glob("spikeseg-*.whl"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels", help="folder for the wheels (default .gpu-wheels)")
    p.add_argument("--python", default="3.12", help="the GPU machine's Python (default 3.12)")
    a = p.parse_args(argv)
    a.dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements(REPO / "requirements" / "constraints.txt")
    drop_stale(a.dest, reqs)
    download(a.dest, a.python, reqs)
    own = build_own_wheel(a.dest)
    wheels = sorted(a.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    for w in wheels:
        print(f"  {w.name}  {w.stat().st_size / 2**20:.1f} MB")
    print(f"{len(wheels)} wheels, {size:.1f} MB in {a.dest} (for Python {a.python}, {', '.join(reqs)}, {own.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
