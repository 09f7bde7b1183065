"""A dated results page from a benchmark's output: ``docs/results/<date>-<name>.md``, stamped with
the machine it was measured on, and the results index rebuilt.

``python -m spikeseg.benchmarks.results_page OUT/results.md --name robustness --title "..." --command "..."``

Why: figures typed by hand into prose drift from what was measured; a page made from the
benchmark's own table, with the date, the command and the machine, cannot.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from pathlib import Path

from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.system import cpu_model, logical_cores

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
#: the CPU flags that decide how fast FP32 and INT8 kernels can run
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimd", "sve")
_PAGE = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<name>[a-z0-9-]+)\.md\Z")


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in FLAGS if f in have]
    except OSError:
        pass
    return []


def gpu_name() -> str:
    """The GPU torch sees, if torch is installed and CUDA is there; else ``none``."""
    try:
        import torch
    except ImportError:
        return "none (torch not installed)"
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def machine_stamp() -> str:
    flags = ", ".join(cpu_flags()) or "none of " + ", ".join(FLAGS)
    return (f"{cpu_model()}; {logical_cores()} logical CPUs usable; flags: {flags}; "
            f"GPU: {gpu_name()}; {os.uname().sysname} {os.uname().machine}")


def write_page(source: Path, name: str, title: str, command: str, date: dt.date | None = None,
               results: Path = RESULTS, machine: str | None = None) -> Path:
    """The page, then the index; the source's own first heading is dropped (the page has its title)."""
    date = date or dt.date.today()
    if not re.fullmatch(r"[a-z0-9-]+", name):
        raise SystemExit(f"--name {name!r}: lower-case letters, digits and dashes only")
    body = source.read_text()
    body = re.sub(r"\A# [^\n]*\n+", "", body)
    page = results / f"{date.isoformat()}-{name}.md"
    write_text(page, f"# {title}\n\n"
                     f"- **Measured:** {date.isoformat()}\n"
                     f"- **Machine:** {machine or machine_stamp()}\n"
                     f"- **Command:** `{command}`\n\n{body.rstrip()}\n")
    write_index(results)
    return page


def write_index(results: Path = RESULTS) -> Path:
    """``index.md``: every dated page, newest first, by its title."""
    rows = []
    for p in sorted(results.glob("*.md"), reverse=True):
        m = _PAGE.match(p.name)
        if m:
            title = p.read_text().splitlines()[0].lstrip("# ").strip()
            rows.append(f"- {m['date']}: [{title}]({p.name})")
    lab = sorted(p.name for p in results.glob("*lab-record*.md"))
    text = ("# Results\n\nEvery page is generated from a benchmark's output and names the date, the command and the "
            "machine it was measured on (`python -m spikeseg.benchmarks.results_page`).\n\n"
            + "\n".join(r for r in rows if "lab-record" not in r) + "\n\n## Lab records\n\n"
            "The measurements behind the project's choices, kept as they were written:\n\n"
            + "\n".join(f"- [{n.removesuffix('.md')}]({n})" for n in lab) + "\n")
    write_text(results / "index.md", text)
    return results / "index.md"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("source", type=Path, help="the benchmark's results.md")
    p.add_argument("--name", required=True, help="the page's name after the date, e.g. robustness")
    p.add_argument("--title", required=True)
    p.add_argument("--command", required=True, help="the command that produced the source")
    p.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default docs/results)")
    a = p.parse_args(argv)
    print(write_page(a.source, a.name, a.title, a.command, results=a.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
