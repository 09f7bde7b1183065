"""The training loop every trainer shares: budget, schedule, AMP, DDP, checkpoints, resume,
metrics and TensorBoard (nnU-Net's trainer-variant design: one loop, subclasses that override
what differs).

A trainer subclasses :class:`Trainer` and gives its model (:meth:`~Trainer.build_model`),
optimiser, one epoch's updates and its validation; :meth:`~Trainer.before_epoch` and
:meth:`~Trainer.unfinished` let it act between epochs and keep the run going past its budget.
The slice trainers live in :mod:`spikeseg.training.trainer`, the patch trainer of the volume
models in :mod:`spikeseg.training.patches`.

Resumes after a kill from ``last.pt`` with nothing lost beyond it: every epoch's randomness is
seeded from (seed, epoch), so a resumed run continues exactly as an uninterrupted one.
On CUDA: automatic mixed precision (bf16 where supported, else fp16 with loss scaling) and
DistributedDataParallel under ``torchrun`` (NCCL; gloo on CPU, which the tests use).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist

from spikeseg.runtime.console import log
from spikeseg.runtime.labels import REGIONS
from spikeseg.runtime.metrics import nll, region_dice
from spikeseg.training.activity import ActivityMonitor
from spikeseg.training.augment import Augmenter
from spikeseg.training.config import TrainConfig
from spikeseg.training.data import CachedCase
from spikeseg.training.devices import amp_dtype, resolve_device, seed_everything
from spikeseg.training.fptt import FPTT
from spikeseg.training.run_folder import RunFolder, save_checkpoint


def validation_scores(cases: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Mean Dice per region, their mean, and mean NLL over (probabilities, region masks) pairs:
    what every trainer logs and selects its best epoch by."""
    scores: dict[str, list[float]] = {r: [] for r in REGIONS}
    nlls = []
    for prob, regions in cases:
        target = np.asarray(regions).astype(bool)
        for r, d in region_dice(prob, target).items():
            scores[r].append(d)
        nlls.append(nll(prob, target))
    out = {f"val_dice_{r}": float(np.mean(v)) for r, v in scores.items()}
    out["val_dice_mean"] = float(np.mean([out[f"val_dice_{r}"] for r in REGIONS]))
    out["val_nll"] = float(np.mean(nlls))
    return out



class Trainer:
    """Trains one model on one fold; everything needed to resume is in :meth:`state`."""

    #: the validation figure whose plateau halves the learning rate, and its better direction
    PLATEAU = ("val_dice_mean", "max")
    #: augmented as whole volumes (normalised again afterwards, as the runtime normalises a case)
    WHOLE_VOLUMES = True

    def __init__(self, cfg: TrainConfig, run: Path, cases: list[CachedCase], train_ids: list[str],
                 val_ids: list[str], rank: int = 0, world: int = 1, local_rank: int = 0) -> None:
        self.cfg, self.run, self.rank, self.world = cfg, run, rank, world
        self.folder = RunFolder(run)
        self.trainer = cfg.resolved_trainer()
        self.device = resolve_device(cfg.device, local_rank)
        self.amp = amp_dtype(self.device, cfg.amp)
        self.augmenter = Augmenter(cfg.augment, (cfg.spacing_mm,) * 3, cfg.normalisation, self.WHOLE_VOLUMES)
        by_id = {c.case_id: c for c in cases}
        self.train_cases = [by_id[i] for i in train_ids]
        self.val_cases = [by_id[i] for i in val_ids]
        seed_everything(cfg.seed)
        #: the frozen twin an SNN distils from, and what its conversion chose (slice models)
        self.teacher: torch.nn.Module | None = None
        self.conversion: dict[str, Any] | None = None
        self.model_cfg, self.model = self.build_model()
        self.model.to(self.device)
        self.activity = ActivityMonitor(self.model)
        self.net = self.model
        if dist.is_initialized():  # under torchrun, one process included
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.opt = self.optimiser()
        self.fptt = self.fptt_optimiser()
        self.epoch = 0
        self.started = time.time()  # the budget's clock, reset by fit()
        #: minutes spent when the last epoch ended, read once per epoch so the schedule and the
        #: stop agree on where the budget stands
        self.minutes = 0.0
        #: the share of the budget the last epoch took (one epoch's share until one has run)
        self.epoch_share = 1.0 / cfg.epochs
        self.sched = self.scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.best_score = -math.inf
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self.writer = None
        if rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(self.folder.tensorboard))
            except Exception:  # TensorBoard is a convenience, never a reason to fail
                self.writer = None

    # -- what a trainer gives ----------------------------------------------------------------
    def build_model(self) -> tuple[Any, torch.nn.Module]:
        """(its config, with ``to_dict()``; the model)."""
        raise NotImplementedError

    def optimiser(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def fptt_optimiser(self) -> FPTT | None:
        """FPTT's regulariser and running mean around the optimiser, for the trainers that use it."""
        return None

    def train_epoch(self) -> float:
        """One epoch's updates; returns the mean training loss."""
        raise NotImplementedError

    def validate(self) -> dict[str, float]:
        """The validation cases' scores (:func:`validation_scores`)."""
        raise NotImplementedError

    def before_epoch(self) -> None:
        """Called before each epoch's updates (the QCFS twin switches its activation here)."""

    def unfinished(self) -> bool:
        """Whether the model is not yet the one the run is meant to end with: the loop goes on past
        its budget, and no checkpoint counts as best, until it is."""
        return False

    # -- the schedule and the budget ---------------------------------------------------------
    def scheduler(self) -> Any:
        """Halving on a plateau of :attr:`PLATEAU`, ``--lr-decay``'s exponential decay per epoch,
        or ``--lr-decay-to``'s exponential decay over the budget (the converted SNN's recipe)."""
        ratio = self.cfg.resolved_lr_decay_to()
        if ratio < 1:
            return torch.optim.lr_scheduler.LambdaLR(self.opt, lambda _: ratio ** self.progress())
        if self.cfg.lr_decay:
            return torch.optim.lr_scheduler.ExponentialLR(self.opt, gamma=1.0 - self.cfg.lr_decay)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode=self.PLATEAU[1], factor=0.5,
                                                          patience=self.cfg.plateau_patience, min_lr=self.cfg.min_lr)

    def progress(self) -> float:
        """Share of the budget spent: epochs run over ``--epochs`` or minutes over
        ``--max-minutes``, whichever is further."""
        done = self.epoch / self.cfg.epochs
        if self.cfg.max_minutes:
            done = max(done, self.minutes / self.cfg.max_minutes)
        return min(1.0, done)

    def elapsed_minutes(self) -> float:
        """Minutes since :meth:`fit` began by rank 0's clock, on every rank: ranks that stopped
        or decayed by their own clocks would fall out of step (DDP hangs at the next all-reduce)."""
        t = torch.tensor([(time.time() - self.started) / 60.0], dtype=torch.float64, device=self.device)
        if self.world > 1:
            dist.broadcast(t, src=0)
        return float(t)

    def step_schedule(self, val: dict[str, float]) -> None:
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(val[self.PLATEAU[0]])
        else:
            self.sched.step()

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "fptt": self.fptt.state_dict() if self.fptt else None,
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                "history": self.history, "model_config": self.model_cfg.to_dict(),
                "activity": self.activity.state_dict()}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if self.fptt and ckpt.get("fptt"):
            self.fptt.load_state_dict(ckpt["fptt"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch = int(ckpt["epoch"])
        self.best_score, self.best_epoch = float(ckpt["best_score"]), int(ckpt["best_epoch"])
        self.history = list(ckpt["history"])
        if ckpt.get("activity"):
            self.activity.load_state_dict(ckpt["activity"])

    # -- one optimiser step -------------------------------------------------------------------
    def descend(self, loss: torch.Tensor) -> None:
        """Backward, clip, one optimiser step (FPTT's, or the plain one), with AMP's scaler."""
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.fptt is not None:
            self.fptt.step(self.cfg.clip, self.scaler)
        else:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
            self.scaler.step(self.opt)
            self.scaler.update()

    def fit(self) -> dict[str, Any]:
        self.started = time.time()
        while self.epoch < self.cfg.epochs or self.unfinished():
            t0 = time.time()
            before = self.progress()
            self.before_epoch()
            train_loss = self.train_epoch()
            train_seconds = time.time() - t0
            val = self.validate()
            self.epoch += 1
            self.minutes = self.elapsed_minutes()
            self.epoch_share = max(self.progress() - before, 1.0 / self.cfg.epochs)
            self.step_schedule(val)
            taus = [m.tau for m in self.model.modules() if hasattr(m, "tau_min")]
            activity = self.activity.epoch_summary()
            per_layer = {k: v for k, v in activity.items() if "/" in k}
            row = {"epoch": self.epoch, "train_loss": train_loss, **val, "lr": self.opt.param_groups[0]["lr"],
                   "tau_mean": float(np.mean(taus)) if taus else math.nan,
                   **{k: v for k, v in activity.items() if k not in per_layer}, "seconds": time.time() - t0,
                   "train_seconds": train_seconds, **self.device_memory()}
            self.history.append(row)
            improved = val["val_dice_mean"] > self.best_score and not self.unfinished()
            if improved:
                self.best_score, self.best_epoch = val["val_dice_mean"], self.epoch
            if self.rank == 0:
                save_checkpoint(self.folder.last, self.state())
                if improved:
                    self._save_best(val)
                self.folder.write_metrics(self.history)
                if self.activity.rows:
                    self.folder.write_activity(self.activity.rows)
                if self.writer:
                    for k, v in {**row, **per_layer}.items():
                        if k != "epoch":
                            self.writer.add_scalar(k, v, self.epoch)
                log.info(f"[{self.cfg.view}] epoch {self.epoch}/{self.cfg.epochs} loss {train_loss:.4f} "
                         f"Dice ET/TC/WT {val['val_dice_ET']:.3f}/{val['val_dice_TC']:.3f}/"
                         f"{val['val_dice_WT']:.3f} NLL {val['val_nll']:.4f} "
                         f"lr {row['lr']:.1e} {row['seconds']:.1f}s")
            if self.unfinished():
                continue  # whatever stops the run, it ends on the model it is meant to be
            if self.cfg.early_stop and self.epoch - self.best_epoch >= self.cfg.early_stop:
                if self.rank == 0:
                    log.info(f"[{self.cfg.view}] no better validation Dice for {self.cfg.early_stop} epochs: "
                             f"stopping early")
                break
            if self.cfg.max_minutes and self.minutes > self.cfg.max_minutes:
                if self.rank == 0:
                    log.info(f"[{self.cfg.view}] time budget of {self.cfg.max_minutes} min reached")
                break
        if self.writer:
            self.writer.close()
        return {"best_epoch": self.best_epoch, "best_val_dice_mean": self.best_score,
                "epochs_run": self.epoch, "seconds": time.time() - self.started}

    def device_memory(self) -> dict[str, float]:
        """On CUDA, the epoch's peak GPU memory (allocated by tensors, MB), then the peak is
        reset so each epoch has its own; nothing on the CPU (peak RSS says it there)."""
        if self.device.type != "cuda":
            return {}
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        torch.cuda.reset_peak_memory_stats(self.device)
        return {"gpu_peak_mb": peak}

    def evaluation_weights(self) -> contextlib.AbstractContextManager:
        """The weights validation and the best checkpoint use (FPTT's running mean, if asked)."""
        return contextlib.nullcontext()

    def _save_best(self, val: dict[str, float]) -> None:
        with self.evaluation_weights():
            weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        save_checkpoint(self.folder.best,
                        {"model": weights, "model_config": self.model_cfg.to_dict(), "epoch": self.epoch,
                         "val": val})
