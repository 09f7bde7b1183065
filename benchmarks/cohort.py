"""Cohort throughput: one process vs a local Dask cluster, same cases, same bundle, one run.

``python -m spikeseg.benchmarks.cohort --bundle BUNDLE --data COHORT --out DIR`` segments the
cohort twice, with ``spikeseg segment`` in one process (``--threads`` = all cores) and on a
``LocalCluster`` (one worker per core, one inference thread each), and prints cases per hour
of each, their ratio, and the scheduler's overhead per case: the cluster's wall-clock time per
case and worker beyond the per-case time the workers' own reports measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from spikeseg.cli import main as cli
from spikeseg.runtime.atomic import write_text
from spikeseg.runtime.cohort import report_path


def _run(bundle: Path, data: Path, out: Path, extra: list[str]) -> float:
    t0 = time.perf_counter()
    rc = cli(["segment", str(bundle), str(data), str(out), "--quiet", *extra])
    if rc not in (0, 1):
        raise SystemExit(f"segment failed (exit {rc})")
    return time.perf_counter() - t0


def _case_seconds(out: Path) -> list[float]:
    reports = [p for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")
               for p in [report_path(out, d.name)] if p.is_file()]
    return [json.loads(p.read_text())["seconds"]["total"] for p in reports]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="a folder of case folders")
    p.add_argument("--out", type=Path, required=True, help="work folder (must not exist)")
    p.add_argument("--views", default="all")
    a = p.parse_args(argv)
    if a.out.exists():
        raise SystemExit(f"{a.out} exists: give a new folder")
    cores = os.cpu_count() or 1
    common = ["--views", a.views]
    single_s = _run(a.bundle, a.data, a.out / "single", common + ["--threads", str(cores)])
    dask_s = _run(a.bundle, a.data, a.out / "dask", common + ["--threads", "1", "--dask", "local"])
    per_case = _case_seconds(a.out / "dask")
    n = len(per_case)
    if not n:
        raise SystemExit("no case was segmented")
    overhead = dask_s * cores / n - sum(per_case) / n
    lines = [f"# Cohort throughput, {n} cases, {cores} cores, views {a.views}\n",
             "| runner | wall s | cases / hour |", "|---|---|---|",
             f"| one process, {cores} inference threads | {single_s:.1f} | {3600 * n / single_s:.0f} |",
             f"| Dask LocalCluster, {cores} workers x 1 thread | {dask_s:.1f} | {3600 * n / dask_s:.0f} |",
             "", f"Dask vs one process: x{single_s / dask_s:.2f} cases per hour. Scheduler and start-up "
                 f"overhead per case and worker: {overhead:.2f} s (worker-measured case time {sum(per_case) / n:.2f} s)."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(a.out / "cohort.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
