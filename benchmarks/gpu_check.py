"""``make gpu-check``: one command that proves training on a CUDA GPU and runs the paper-preset
fidelity comparison there, in under 9 minutes of wall time, everything in one folder.

Steps (each timed; a failing step is reported and the rest still run):

1. ``tests``: ``pytest -m gpu`` (device choice, one update against the CPU's, bf16 and fp16
   training steps, resume across devices, torchrun with NCCL and gloo, the paper preset's FPTT
   memory), JUnit XML and log kept;
2. ``phantoms``: hard phantom cases in the BraTS layout, as many as the demo makes (12 training,
   4 held out), unless ``--train``/``--test`` name cases already there;
3. ``speed``: one epoch of the twin and of the SNN (FPTT) at each ``--speed-presets`` preset
   through ``spikeseg train`` on five training cases (four train, one validates): slices per
   second of training and the epoch's peak GPU memory;
4. ``fidelity``: ``benchmarks/fidelity.py`` at ``--preset`` (paper) on the phantoms, the twin and
   the recipe SNN (``snn-warm``), the ``--views`` (axial), with ``--minutes`` per model or what
   is left of the wall-time budget, whichever is less; its table, JSON and TensorBoard logs.

Writes ``OUT/summary.md`` and ``OUT/summary.json`` (the machine: GPU, driver, torch, CUDA), prints
the summary, exits 1 if any step failed. ``--dry-run`` runs the same steps on the CPU with the
tiny preset and seconds of budget (a test runs it, so the script cannot rot).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

TRAIN_CASES, TEST_CASES = 12, 4  # the demo's counts (benchmarks/demo.py)
SPEED_CASES = 5
#: what the evaluation and the summary need after the fidelity training, per model trained
FIDELITY_RESERVE_MIN = 1.0


@dataclass
class Step:
    name: str
    status: str = "not run"      # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    """What the check runs: the GPU's defaults, or the dry run's tiny stand-ins."""

    device: str
    preset: str
    speed_presets: tuple[str, ...]
    spacing: str
    minutes: float
    views: str
    wall_minutes: float
    train_cases: int
    test_cases: int
    phantom_size: str


def plan_for(a: argparse.Namespace) -> Plan:
    if a.dry_run:
        return Plan("cpu", "tiny", ("tiny",), "6", 0.02, a.views, a.wall_minutes, SPEED_CASES, 2, "small")
    return Plan(a.device, a.preset, tuple(a.speed_presets.split(",")), a.spacing, a.minutes, a.views,
                a.wall_minutes, TRAIN_CASES, TEST_CASES, "small")


def machine() -> dict[str, Any]:
    """The figures' machine: GPU, driver, torch and CUDA, CPU and cores."""
    import torch

    import spikeseg

    info: dict[str, Any] = {"spikeseg": f"{spikeseg.__version__} from {Path(spikeseg.__file__).parent}",
                            "python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cpu": platform.processor() or platform.machine(),
                            "cores": os.cpu_count()}
    try:
        from spikeseg.runtime.system import cpu_model
        info["cpu"] = cpu_model()
    except Exception:  # noqa: BLE001 - the summary names what it can
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = None
    else:
        info["gpu"] = None
    return info


def run_step(step: Step, fn: Callable[[Step], None]) -> Step:
    """Run one step, never letting it stop the others: its failure is its status and detail."""
    print(f"== {step.name}", flush=True)
    t0 = time.perf_counter()
    try:
        fn(step)
        if step.status == "not run":
            step.status = "ok"
    except Exception as exc:  # noqa: BLE001 - every step reports, the check goes on
        step.status, step.detail = "failed", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    step.seconds = time.perf_counter() - t0
    print(f"   {step.status} in {step.seconds:.0f} s {step.detail}", flush=True)
    return step


def cli(*args: Any, log: Path | None = None) -> None:
    """``spikeseg ARGS`` in a subprocess (its own CUDA context; a crash is this step's only)."""
    cmd = [sys.executable, "-m", "spikeseg.cli", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"spikeseg {' '.join(map(str, args[:2]))} failed (exit {r.returncode}): "
                           f"{r.stderr.strip()[-600:]}")


def step_tests(out: Path, repo: Path, step: Step) -> None:
    """The tests live in the checkout, not in the installed package: ``repo`` is its root."""
    tests = repo / "tests" / "training" / "test_gpu.py"
    if not tests.is_file():
        raise RuntimeError(f"{tests} not found: run the check from the spikeseg checkout (or pass --repo)")
    xml, log = out.resolve() / "pytest.xml", out.resolve() / "pytest.log"
    env = {**os.environ, "SPIKESEG_GPU_OUT": str(out.resolve())}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", str(tests), "-q", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    log.write_text(r.stdout + r.stderr)
    counts = junit_counts(xml)
    step.figures.update(counts)
    memory = out / "fptt_memory.json"
    if memory.is_file():
        step.figures["fptt_paper_peak_mb"] = json.loads(memory.read_text())["peak_mb"]
    step.detail = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    if r.returncode not in (0, 5) or counts.get("failed") or counts.get("errors"):
        raise RuntimeError(f"pytest -m gpu: {step.detail or 'exit ' + str(r.returncode)} (see {log})")


def junit_counts(xml: Path) -> dict[str, int]:
    """passed / failed / errors / skipped from pytest's JUnit XML (zeros when it is missing)."""
    import xml.etree.ElementTree as ET

    if not xml.is_file():
        return {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"passed": n["tests"] - n["failures"] - n["errors"] - n["skipped"], "failed": n["failures"],
            "errors": n["errors"], "skipped": n["skipped"]}


def step_phantoms(out: Path, plan: Plan, a: argparse.Namespace, step: Step) -> tuple[Path, Path]:
    if a.train and a.test:
        step.status, step.detail = "skipped", f"given: {a.train}, {a.test}"
        return a.train, a.test
    train, test = out / "data" / "train", out / "data" / "test"
    for folder, n, seed in ((train, plan.train_cases, 1), (test, plan.test_cases, 2)):
        if not folder.exists():
            cli("phantoms", folder, "--cases", n, "--seed", seed, "--difficulty", "hard", "--size", plan.phantom_size,
                "--quiet")
    step.detail = f"{plan.train_cases} training + {plan.test_cases} held-out hard phantoms"
    return train, test


def step_speed(out: Path, plan: Plan, train: Path, step: Step) -> None:
    """One epoch per (model, preset) on the first cases of the training folder."""
    from spikeseg.runtime.case_io import find_cases

    import shutil

    speed_data = out / "speed" / "data"
    if not speed_data.exists():
        for case in find_cases(train)[:SPEED_CASES]:
            shutil.copytree(case, speed_data / case.name)
    rows = []
    for preset in plan.speed_presets:
        for arch, name in (("useg", "twin"), ("spiking-useg", "snn-fptt")):
            run = out / "speed" / f"{name}-{preset}"
            cli("train", "--data", speed_data, "--out", run, "--arch", arch, "--view", "axial", "--preset", preset,
                "--spacing", plan.spacing, "--epochs", "1", "--device", plan.device, "--overwrite", "--quiet",
                log=run.with_suffix(".log"))
            rows.append({"model": name, "preset": preset, **epoch_speed(run)})
    step.figures["speed"] = rows


def epoch_speed(run: Path) -> dict[str, Any]:
    """Slices per second of the epoch's training (its slice sequences over its training time),
    and its peak GPU memory, from the run folder's metrics and config."""
    from spikeseg.training.run_folder import RunFolder  # torch: imported where the check runs

    folder = RunFolder(run)
    row = folder.metrics()[0]
    record, splits, params = folder.record(), folder.splits(), folder.preprocess()
    slices = len(splits["train"]) * round(params.crop_mm[2] / params.spacing_mm[2])  # axial sequences
    train_s = float(row.get("train_seconds") or row["seconds"])
    return {"device": record.device, "amp": record.amp_dtype, "slices": slices, "train_s": round(train_s, 2),
            "slices_per_s": round(slices / train_s, 1) if train_s > 0 else None,
            "gpu_peak_mb": round(float(row["gpu_peak_mb"]), 1) if row.get("gpu_peak_mb") else None}


def step_fidelity(out: Path, plan: Plan, train: Path, test: Path, deadline: float, step: Step) -> None:
    left = (deadline - time.time()) / 60.0 - FIDELITY_RESERVE_MIN
    minutes = min(plan.minutes, left / 2)  # two models, each its budget per view (one view by default)
    if left < 0.2:
        step.status, step.detail = "skipped", f"{left:.1f} min left of the wall-time budget: no room to train"
        return
    from spikeseg.benchmarks import fidelity

    folder = out / "fidelity"
    argv = ["--train", str(train), "--test", str(test), "--out", str(folder), "--minutes", f"{minutes:.3f}",
            "--preset", plan.preset, "--spacing", plan.spacing, "--models", "twin,snn-warm", "--views", plan.views,
            "--device", plan.device, "--overwrite"]
    rc = fidelity.main(argv)
    if rc != 0:
        raise RuntimeError(f"fidelity exited {rc}")
    rows = list(csv.DictReader((folder / "results.csv").open()))
    step.figures["minutes_per_model"] = round(minutes, 2)
    step.figures["ensemble"] = {r["model"]: {k: round(float(r[f"dice_{k}"]), 3) for k in ("ET", "TC", "WT")}
                                for r in rows if r["view"] == "ensemble"}
    step.detail = f"{minutes:.2f} min per model, results in {folder / 'results.md'}"


def summary_markdown(steps: list[Step], info: dict[str, Any], plan: Plan, wall: float) -> str:
    gpu = info.get("gpu") or "no GPU (dry run on the CPU)"
    lines = [f"# GPU check ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {gpu}" + (f", {info.get('gpu_memory_gb')} GB, driver {info.get('driver')}" if info.get("gpu")
                                   else "") + f"; torch {info['torch']} (CUDA {info['cuda']}), Python {info['python']}, "
             f"CPU {info['cpu']} ({info['cores']} cores). Plan: device {plan.device}, fidelity preset {plan.preset}, "
             f"{plan.spacing} mm grid, views {plan.views}; wall time {wall / 60:.1f} min.", "",
             "| step | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.detail} |" for s in steps]
    speed = next((s.figures.get("speed") for s in steps if s.name == "speed"), None)
    if speed:
        lines += ["", "One epoch (axial, 4 training sequences; slices per second of training; peak GPU memory):", "",
                  "| model | preset | device | precision | slices/s | train s | peak GPU MB |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['preset']} | {r['device']} | {r['amp']} | {r['slices_per_s']} | {r['train_s']} | "
                  f"{r['gpu_peak_mb'] if r['gpu_peak_mb'] is not None else '-'} |" for r in speed]
    fid = next((s.figures.get("ensemble") for s in steps if s.name == "fidelity"), None)
    if fid:
        lines += ["", "Fidelity (held-out phantoms, Dice ET / TC / WT of the views' mean):", ""]
        lines += [f"- {m}: {d['ET']:.3f} / {d['TC']:.3f} / {d['WT']:.3f}" for m, d in fid.items()]
        if "twin" in fid and "snn-warm" in fid:
            gap = {k: 100 * (fid["twin"][k] - fid["snn-warm"][k]) for k in ("ET", "TC", "WT")}
            lines.append(f"- gap twin - SNN: {gap['ET']:.1f} / {gap['TC']:.1f} / {gap['WT']:.1f} Dice points")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("GPU_OUT", "gpu-check")),
                   help="folder for everything the check writes (default $GPU_OUT or gpu-check/)")
    p.add_argument("--device", choices=["cuda", "cpu", "auto"], default="cuda", help="default cuda")
    p.add_argument("--preset", default="paper", help="the fidelity comparison's preset (default paper)")
    p.add_argument("--speed-presets", default="paper,small", help="presets timed for one epoch (default paper,small)")
    p.add_argument("--spacing", default="2", help="model grid in mm (default 2, the demo's)")
    p.add_argument("--minutes", type=float, default=3.0,
                   help="fidelity training budget per model and view (default 3; less if the wall time runs short)")
    p.add_argument("--views", default="axial", help="views the fidelity comparison trains (default axial)")
    p.add_argument("--wall-minutes", type=float, default=9.0,
                   help="the whole check's wall-time budget; the fidelity budget shrinks to fit (default 9)")
    p.add_argument("--train", type=Path, help="labelled training cases to use instead of generating phantoms")
    p.add_argument("--test", type=Path, help="labelled held-out cases to use instead of generating phantoms")
    p.add_argument("--repo", type=Path, default=Path.cwd(), help="the spikeseg checkout whose tests run (default .)")
    p.add_argument("--steps", default="tests,phantoms,speed,fidelity", help="comma list of the steps to run")
    p.add_argument("--dry-run", action="store_true",
                   help="on the CPU with the tiny preset and seconds of budget: checks the script, measures nothing")
    a = p.parse_args(argv)
    started = time.time()
    deadline = started + 60 * a.wall_minutes
    plan = plan_for(a)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(a.steps.split(","))
    info = machine()
    if plan.device == "cuda" and not info.get("gpu"):
        print("gpu-check: no CUDA GPU visible; run `make gpu-check` on a GPU machine, or --dry-run here",
              file=sys.stderr)
        return 2
    steps: list[Step] = []
    data: dict[str, Path] = {}

    def phantoms(step: Step) -> None:
        data["train"], data["test"] = step_phantoms(out, plan, a, step)

    actions: list[tuple[str, Callable[[Step], None]]] = [
        ("tests", lambda s: step_tests(out, a.repo.resolve(), s)),
        ("phantoms", phantoms),
        ("speed", lambda s: step_speed(out, plan, data["train"], s)),
        ("fidelity", lambda s: step_fidelity(out, plan, data["train"], data["test"], deadline, s)),
    ]
    for name, fn in actions:
        if name in wanted or (name == "phantoms" and wanted & {"speed", "fidelity"}):
            steps.append(run_step(Step(name), fn))
    wall = time.time() - started
    md = summary_markdown(steps, info, plan, wall)
    (out / "summary.md").write_text(md)
    (out / "summary.json").write_text(json.dumps({"machine": info, "plan": asdict(plan), "wall_seconds": wall,
                                                  "steps": [asdict(s) for s in steps]}, indent=2) + "\n")
    print(md)
    return 1 if any(s.status == "failed" for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
