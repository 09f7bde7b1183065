"""What the report says about the machine and the process: CPU model, peak memory per case.

Linux first (``/proc``), POSIX next (``resource``), psutil where neither exists, so the runtime
starts on any platform and says what it measured."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets VmHWM, so each case gets its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource  # POSIX only: the runtime must still start on Windows
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except ImportError:
        import psutil
        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**20


def machine() -> str:
    return platform.machine()


def physical_cores() -> int:
    """Physical cores this process may run on: the default thread count for inference.

    Why physical, not logical: convolution kernels saturate a core's vector units, so a second
    hyper-thread on the same core adds contention, not throughput (OpenVINO's own default for
    latency is one stream on the physical cores). Counted from /proc/cpuinfo's distinct
    (physical id, core id) pairs among the CPUs in this process's affinity mask; where that is
    not readable, the usable logical CPUs."""
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        cpu = phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "processor":
                cpu = int(value)
            elif key == "physical id":
                phys = value
            elif key == "core id":
                core = value
            elif not key and cpu is not None:  # a blank line ends one processor's block
                if cpu in allowed and core is not None:
                    cores.add((phys or "0", core))
                cpu = phys = core = None
    except (OSError, ValueError):
        cores = set()
    return max(1, len(cores) or len(allowed))


def logical_cores() -> int:
    """Logical CPUs this process may run on: the most inference threads that make sense."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_threads(threads: object) -> int:
    """A thread count from 1 to the logical cores, or a clear error: 10000 threads once ran ONNX
    Runtime for 5 minutes instead of 1 s, and 0 or -1 went into the report as given."""
    from spikeseg.runtime.errors import InputError

    limit = logical_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= limit:
        raise InputError(None, f"--threads {threads!r}: expected 1 to {limit} (the logical CPUs this process may use)")
    return threads
