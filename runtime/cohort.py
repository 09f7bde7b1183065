"""A cohort run's bookkeeping: which cases there are, where their results go, who works on each.

Three rules keep a user's data safe however ``spikeseg segment`` is called or re-called:

- One case identity, the id in the file names (checked to be a plain folder name), used for
  discovery, skipping, outputs, locks and the summary; two folders with the same id both fail.
- Outputs never touch inputs: an output folder equal to, inside, or holding an input folder is
  refused before anything is read, and predictions are named ``<case>_pred.nii.gz``, which no
  BraTS input file is called.
- The summary is rebuilt from the per-case reports on disk after every run, so a re-run, a
  second process or a shard never drops results that are already there.

Concurrent runs on one output folder split the work: each case is taken under an exclusive,
non-blocking lock (``OUT/.locks/<case>.lock``, released by the OS if the process dies), and a
case held by another process is left to it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from spikeseg.runtime.atomic import sweep_partials, write_text
from spikeseg.runtime.case_io import find_case, find_cases
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.outputs import inside
from spikeseg.runtime.tables import rows_to_csv

try:  # POSIX; elsewhere runs on one output folder are not coordinated (documented)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

SUMMARY = "summary.csv"
SUMMARY_COLUMNS = ["case", "status", "qc", "qc_reasons", "seconds", "peak_rss_mb", "ET_ml", "TC_ml", "WT_ml", "folder",
                   "message"]
LOCKS = ".locks"
FAILURES = ".failures"


@dataclass(frozen=True)
class CohortCase:
    """One input case folder and its id, or why it cannot be run."""

    folder: Path
    case_id: str | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.case_id or self.folder.name


#: The names of a case's outputs, here and nowhere else. What follows the case id in the label
#: map ``segment`` writes:
PREDICTION_SUFFIX = "_pred.nii.gz"


def prediction_name(case_id: str) -> str:
    """The label map ``segment`` writes; never a BraTS input name (``_seg`` is the reference)."""
    return f"{case_id}{PREDICTION_SUFFIX}"


def uncertainty_name(case_id: str) -> str:
    return f"{case_id}_uncertainty.nii.gz"


def native_name(output_name: str) -> str:
    """An output put back on the scanner's native T1ce grid (cases from ``spikeseg prepare``):
    ``<case>_pred.nii.gz`` -> ``<case>_pred.native.nii.gz``."""
    return output_name.replace(".nii.gz", ".native.nii.gz")


def probability_name(case_id: str) -> str:
    return f"{case_id}_prob.nii.gz"


def quicklook_name(case_id: str) -> str:
    return f"{case_id}_quicklook.png"


def report_name(case_id: str) -> str:
    """Written last into a case's output folder: its presence means the case is complete."""
    return f"{case_id}_report.json"


#: a report is a few kB; anything far bigger in its place is not one and is not parsed
MAX_REPORT_BYTES = 16 << 20


def report_path(out: Path, case_id: str) -> Path:
    return out / case_id / report_name(case_id)


def discover(input_path: Path) -> list[CohortCase]:
    """Every case folder under ``input_path`` with its id; an unreadable folder or a
    duplicated id becomes an error on that case, not on the run."""
    cases = []
    for folder in find_cases(input_path):
        try:
            cases.append(CohortCase(folder, find_case(folder).case_id))
        except InputError as exc:
            cases.append(CohortCase(folder, None, str(exc)))
    by_id: dict[str, list[Path]] = {}
    for c in cases:
        if c.case_id:
            by_id.setdefault(c.case_id, []).append(c.folder)
    out = []
    for c in cases:
        folders = by_id.get(c.case_id or "", [])
        if len(folders) > 1:
            others = ", ".join(str(f) for f in folders if f != c.folder)
            c = CohortCase(c.folder, c.case_id, f"{c.folder}: case id {c.case_id!r} is also the id of {others}; "
                                                "ids must be unique in a run")
        out.append(c)
    return out


#: Disk-full errors: the run stops (every later case would fail the same way) with a summary.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFull(Exception):
    """The output's filesystem is full: stop the run, say so once, summarise what finished."""


def check_output_apart(out: Path, input_path: Path, cases: list[CohortCase]) -> None:
    """Refuse an output folder inside a case folder, or equal to or holding any input folder.

    (An output folder beside the case folders of a cohort root, ``COHORT/results``, is fine:
    it is no case folder and holds none.)"""
    for c in cases:
        if inside(out, c.folder):
            raise InputError(out, f"output folder is inside the input case folder {c.folder}: "
                                  "choose an output folder outside the input data")
    for folder in [input_path, *(c.folder for c in cases)]:
        if inside(folder, out):
            raise InputError(out, f"output folder holds the input {folder}: "
                                  "choose an output folder outside the input data")


def check_writable(out: Path) -> None:
    """Find a read-only or misplaced output folder before any inference is spent."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise InputError(out, f"cannot write to the output folder: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def case_lock(out: Path, case_id: str) -> Iterator[bool]:
    """Yield True while this process holds ``case_id``'s lock, False if another one does.

    Holding it, stale partial folders a killed run left for this case are swept. The lock file
    is removed on release (nothing is left in OUT but results); a process that locked a file
    just unlinked by its holder sees the inode change and tries again."""
    if fcntl is None:
        yield True
        return
    locks = out / LOCKS
    path = locks / f"{case_id}.lock"
    while True:
        locks.mkdir(exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed by a finishing process: again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        sweep_partials(out, case_id)
        yield True
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
        with contextlib.suppress(OSError):
            locks.rmdir()  # only when empty: other cases may be locked


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``I/N`` (1-based) to (I, N): this process takes every N-th case of the sorted cohort."""
    if not spec:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise InputError(None, f"--shard {spec!r}: expected I/N, e.g. 2/8") from None
    if not 1 <= i <= n:
        raise InputError(None, f"--shard {spec!r}: need 1 <= I <= N")
    return i, n


def shard_of(cases: list[CohortCase], shard: tuple[int, int] | None) -> list[CohortCase]:
    """The cases one shard runs; every shard sees the same sorted list, so shards never overlap."""
    if shard is None:
        return cases
    i, n = shard
    return [c for k, c in enumerate(cases) if k % n == i - 1]


def _failure_path(out: Path, case: CohortCase) -> Path:
    """Where a case's failure is kept. A folder name can be 255 bytes, too long once the
    temporary name's parts are added: long names keep their start and a hash of the whole."""
    name = case.name
    if len(name.encode()) > 120:
        name = f"{name.encode()[:80].decode(errors='ignore')}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return out / FAILURES / f"{name}.txt"


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def record_outcome(out: Path, case: CohortCase, status: str, message: str) -> None:
    """Keep a failure on disk (so another process's summary lists it); a success clears it.
    A full disk raises :class:`DiskFull`; any other write error is lost from disk only (the
    console and this process's summary still have it)."""
    path = _failure_path(out, case)
    try:
        if status == "failed":
            path.parent.mkdir(exist_ok=True)
            write_text(path, message)
        elif status == "ok":
            path.unlink(missing_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFull(f"{out}: {exc.strerror or exc}") from exc


def _row_from_report(out: Path, case: CohortCase, fresh: bool) -> dict[str, Any] | None:
    path = report_path(out, case.case_id) if case.case_id else None
    if path is None or not path.is_file():
        return None
    try:
        rep = json.loads(path.read_text())
        v, qc = rep["volumes_ml"], rep.get("qc") or {"verdict": "unchecked", "reasons": ["no QC in this report"]}
        return {"case": case.case_id, "status": "ok", "qc": qc["verdict"], "qc_reasons": "; ".join(qc["reasons"]),
                "seconds": rep["seconds"]["total"],
                "peak_rss_mb": rep.get("peak_rss_mb"), "ET_ml": v["ET"], "TC_ml": v["TC"], "WT_ml": v["WT"],
                "folder": str(case.folder), "message": "" if fresh else "done earlier"}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {"case": case.case_id, "status": "failed", "folder": str(case.folder),
                "message": f"{path}: unreadable report ({exc})"}


def report_qc(out: Path, case_id: str) -> str | None:
    """The QC verdict in a case's report on disk (None: no readable report)."""
    return qc_verdict(report_path(out, case_id))


def read_report(out: Path, case_id: str) -> dict[str, Any]:
    """A case's report as ``segment`` wrote it into ``out`` (benchmarks and the demo read it back)."""
    path = report_path(out, case_id)
    if not path.is_file() or path.stat().st_size > MAX_REPORT_BYTES:
        raise InputError(path, "no report here, or too big to be one")
    return json.loads(path.read_text())


def qc_verdict(report: Path) -> str | None:
    """The QC verdict a report file holds (None: no such file, too big for a report, or unreadable)."""
    try:
        if report.stat().st_size > MAX_REPORT_BYTES:
            return None
        return str(json.loads(report.read_text())["qc"]["verdict"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_summary(out: Path, cases: list[CohortCase], outcomes: dict[Path, tuple[str, str]]) -> list[dict]:
    """``summary.csv`` for every case of the input, from what is on disk (reports, recorded
    failures), so it is complete whichever process or shard writes it last; ``outcomes`` holds
    (status, message) of this process's cases that left nothing on disk (busy)."""
    rows = summary_rows(out, cases, outcomes)
    write_text(out / SUMMARY, rows_to_csv(rows, SUMMARY_COLUMNS))
    return rows


def summary_rows(out: Path, cases: list[CohortCase], outcomes: dict[Path, tuple[str, str]]) -> list[dict]:
    """The summary's rows (see :func:`write_summary`), without writing them."""
    rows = []
    for case in cases:
        status, message = outcomes.get(case.folder, ("", ""))
        row = _row_from_report(out, case, fresh=status == "ok")
        if row is None and _failure_path(out, case).is_file():
            status, message = "failed", _failure_path(out, case).read_text()
        if row is None:
            row = {"case": case.name, "status": status or "pending", "folder": str(case.folder),
                   "message": message or "not run yet (another shard, or an interrupted run)"}
        rows.append(row)
    return rows
