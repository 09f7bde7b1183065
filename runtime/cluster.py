"""``spikeseg segment --dask local|ADDRESS``: a cohort's cases as tasks on a Dask cluster.

Dask distributed (optional extra ``spikeseg[cluster]``) schedules, balances and reschedules: a
case whose worker dies is run again elsewhere (``retries``, and the scheduler's own recovery of
lost tasks). Each worker process opens the bundle and compiles its engines once, on its first
case, and keeps them for the rest. What keeps the outputs right is the same as for a single
process or ``--shard`` jobs: per-case locks, outputs assembled in a hidden folder and renamed
into place, failures recorded per case, the summary rebuilt from the reports on disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from spikeseg.runtime.cohort import CohortCase
from spikeseg.runtime.errors import InputError

if TYPE_CHECKING:
    from spikeseg.runtime.options import SegmentOptions

#: this worker process's predictors, one per bundle folder and options: compiled once, then reused
_PREDICTORS: dict[tuple[str, "SegmentOptions"], Any] = {}


def _predictor(bundle: str, options: "SegmentOptions") -> Any:
    from spikeseg.runtime.predictor import Predictor

    if (bundle, options) not in _PREDICTORS:
        _PREDICTORS[bundle, options] = Predictor(bundle, options)
    return _PREDICTORS[bundle, options]


def _segment_task(bundle: str, options: "SegmentOptions", case: CohortCase, out: Path,
                  overwrite: bool) -> tuple[str, str]:
    from spikeseg.runtime.segment import run_case

    return run_case(_predictor(bundle, options), case, out, overwrite, single=False)


def _client(address: str, threads: int):
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise InputError(None, "--dask needs Dask distributed: pip install 'spikeseg[cluster]'") from exc
    if address == "local":
        workers = max(1, (os.cpu_count() or 1) // max(threads, 1))
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(address, timeout=30), None
    except OSError as exc:
        raise InputError(None, f"cannot reach the Dask scheduler at {address}: {exc}") from exc


def run_on_dask(address: str, bundle: str, options: "SegmentOptions", cases: list[CohortCase], out: Path,
                overwrite: bool, task: Callable[..., tuple[str, str]] = _segment_task
                ) -> Iterator[tuple[CohortCase, tuple[str, str]]]:
    """(case, (status, message)) for every case, as they finish. A task that fails outside
    the segmenter's own error handling (a worker that died more often than the scheduler's
    ``allowed-failures``) is reported as failed. ``task`` is the per-case function: the
    segmenter here, a stand-in that kills its worker in the tests."""
    from distributed import as_completed

    client, cluster = _client(address, options.threads or 1)
    try:
        futures = {client.submit(task, bundle, options, case, out, overwrite, pure=False, retries=1,
                                 key=f"segment-{case.case_id or case.name}"): case for case in cases}
        for future in as_completed(futures):
            try:
                status = future.result()
            except Exception as exc:  # noqa: BLE001 - reported per case, the cohort goes on
                status = ("failed", f"on the cluster: {type(exc).__name__}: {exc}")
            yield futures[future], status
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
