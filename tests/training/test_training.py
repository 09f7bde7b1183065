"""The trainer end to end on tiny CPU presets: run folder, resume after a kill, DDP on gloo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.helpers import REPO, run_cli

FAST = ["--preset", "tiny", "--spacing", "6", "--batch-size", "2", "--window", "4"]


def _train_args(data: Path, out: Path, *extra: str, talk: str = "--quiet") -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--view", "axial", *FAST, talk, *extra]


def test_run_folder_has_everything_and_loss_falls(phantom5: Path, tmp_path: Path) -> None:
    r = run_cli(*_train_args(phantom5, tmp_path / "run", "--epochs", "3"))
    assert r.returncode == 0, r.stderr
    assert "epoch 1/3" not in r.stderr and "preprocess" not in r.stderr  # -q: no step lines, no bars
    run = tmp_path / "run"
    for name in ("config.json", "preprocess.json", "splits.json", "metrics.csv", "summary.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["trainer"] == "fptt" and cfg["device"] == "cpu" and cfg["amp_dtype"] == "float32"
    splits = json.loads((run / "splits.json").read_text())
    assert len(splits["validation"]) == 1 and len(splits["train"]) == 4
    assert not set(splits["train"]) & set(splits["validation"])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 4
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    losses = [h["train_loss"] for h in ckpt["history"]]
    assert losses[-1] < losses[0]
    again = run_cli(*_train_args(phantom5, run, "--epochs", "3"))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_resume_after_kill_matches_an_uninterrupted_run(phantom5: Path, tmp_path: Path) -> None:
    ref = run_cli(*_train_args(phantom5, tmp_path / "ref", "--epochs", "3"), isolated=True)  # fresh, as the killed run
    assert ref.returncode == 0, ref.stderr
    code = "import sys; from spikeseg.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, *_train_args(phantom5, tmp_path / "k", "--epochs", "3")],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "k" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["epoch"] >= 1:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch_at_kill = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= epoch_at_kill < 3, "the kill should land mid-run"
    res = run_cli(*_train_args(phantom5, tmp_path / "k", "--epochs", "3", "--resume", talk="-v"), isolated=True)
    assert res.returncode == 0, res.stderr
    assert f"[axial] resuming after epoch {epoch_at_kill}" in res.stderr and "[axial] epoch 3/3 loss" in res.stderr
    assert "fptt trainer on cpu (float32" in res.stderr  # what -v adds: the settings the run resolved
    a = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert b["epoch"] == 3
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_ddp_two_cpu_processes_stay_in_sync(phantom5: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # no augmentation: with one volume a step, 3 epochs of augmented draws need not lower the loss,
    # and what this test is about is the ranks staying in sync
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spikeseg.cli", *_train_args(phantom5, tmp_path / "ddp", "--epochs", "3", "--batch-size", "1",
                                              "--augment", "none")]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    cfg = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert cfg["world_size"] == 2
    hist = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_ddp_ranks_share_one_clock_for_the_budget_and_its_decay(phantom5: Path, tmp_path: Path) -> None:
    """A run ended by --max-minutes with the learning rate decaying by the clock: every rank must
    stop after the same epoch and step with the same rate, so rank 0's clock is the one used (two
    clocks differ by milliseconds: rates drift apart and the parameter digests differ)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "spikeseg.cli", *_train_args(phantom5, tmp_path / "ddp", "--epochs", "1000", "--batch-size", "1",
                                              "--max-minutes", "0.1", "--lr-decay-to", "0.5")]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    digests = json.loads((tmp_path / "ddp" / "summary.json").read_text())["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    hist = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert len(hist) < 1000 and hist[0]["lr"] < 1e-3 * 0.5 ** (1 / 1000), "the clock should set the rate"


def test_bad_combinations_are_refused(phantom5: Path, tmp_path: Path) -> None:
    r = run_cli("train", "--data", phantom5, "--out", tmp_path / "x", "--arch", "useg", "--trainer", "fptt",
                "--quiet")
    assert r.returncode == 2 and "standard" in r.stderr
    r = run_cli("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "y", "--quiet")
    assert r.returncode == 2 and "nowhere" in r.stderr
