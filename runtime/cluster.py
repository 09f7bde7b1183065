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
from typing import Any, Callable, Iterator

from spikeseg.runtime.cohort import CohortCase
from spikeseg.runtime.errors import InputError

#: (bundle folder, backend, precision, views (None: the bundle's), inference threads, ET minimum voxels,
#: count operations, spherical projections, refiner bundle folder, guide mode): Segmenter's arguments
SegmenterKey = tuple[str, str, str, tuple[str, ...] | None, int, int, bool, int, str | None, str | None]
_SEGMENTERS: dict[SegmenterKey, Any] = {}


def _segmenter(key: SegmenterKey) -> Any:
    """This worker process's segmenter for a bundle and settings: compiled once, then reused."""
    from spikeseg.runtime.bundle import load_bundle
    from spikeseg.runtime.segment import Segmenter

    if key not in _SEGMENTERS:
        bundle, backend, precision, views, threads, et_min_voxels, count_ops, projections, refine, guide = key
        _SEGMENTERS[key] = Segmenter(load_bundle(bundle), backend, precision, list(views) if views else None, threads,
                                     et_min_voxels, count_ops=count_ops, projections=projections,
                                     refine=load_bundle(refine) if refine else None, guide_mode=guide)
    return _SEGMENTERS[key]


def _segment_task(key: SegmenterKey, case: CohortCase, out: Path, overwrite: bool, png: bool,
                  save_prob: bool) -> tuple[str, str]:
    from spikeseg.runtime.segment import run_case

    return run_case(_segmenter(key), case, out, overwrite, png, save_prob, single=False)


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


def run_on_dask(address: str, key: SegmenterKey, cases: list[CohortCase], out: Path, overwrite: bool,
                png: bool, save_prob: bool, task: Callable[..., tuple[str, str]] = _segment_task
                ) -> Iterator[tuple[CohortCase, tuple[str, str]]]:
    """(case, (status, message)) for every case, as they finish. A task that fails outside
    the segmenter's own error handling (a worker that died more often than the scheduler's
    ``allowed-failures``) is reported as failed. ``task`` is the per-case function: the
    segmenter here, a stand-in that kills its worker in the tests."""
    from distributed import as_completed

    client, cluster = _client(address, key[4])
    try:
        futures = {client.submit(task, key, case, out, overwrite, png, save_prob, pure=False, retries=1,
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
