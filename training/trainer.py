"""``spikeseg train`` for the view models: one model per view, trained by a subclass of the
shared loop (:class:`~spikeseg.training.loop.Trainer`) for each ``--trainer``; the volume models'
patch trainer is :mod:`spikeseg.training.patches`, the run folder's layout
:class:`~spikeseg.training.run_folder.RunFolder`.

Trainers (paper section 3.2; docs/results/fidelity-lab-record.md for what each measured here):
- ``fptt`` (:class:`FPTTTrainer`): an update every ``--window`` K slices (K=1 is the paper's
  per-slice update), the state detached between windows, FPTT's regulariser and running mean
  (``training.fptt``). Memory stays flat in the sequence length.
- ``tbptt`` (:class:`TBPTTTrainer`): the same windows without FPTT's terms; ``bptt``
  (:class:`BPTTTrainer`): one update per whole sequence.
- ``standard`` (:class:`StandardTrainer`): the stateless twin, shuffled slices, as many updates
  as ``fptt`` makes.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from spikeseg.runtime.bundle_spec import VOLUME
from spikeseg.runtime.case_io import find_cases
from spikeseg.runtime.console import log
from spikeseg.runtime.errors import InputError
from spikeseg.runtime.preprocess import PreprocessParams, parse_views
from spikeseg.snn.models import ModelConfig, SliceSegNet, build_model
from spikeseg.snn.qcfs import own_state_keys, qcfs_layers
from spikeseg.training.config import VOLUME_ARCHS, TrainConfig
from spikeseg.training.conversion import balance, start_qcfs
from spikeseg.training.data import (CachedCase, cache_folder, data_fingerprint, kfold_split, preprocess_dataset,
                                    view_sequence)
from spikeseg.training.devices import distributed_backend, init_distributed, params_digest, seed_everything
from spikeseg.training.fptt import FPTT
from spikeseg.training.loop import Trainer, validation_scores
from spikeseg.training.losses import bce_dice_loss, distillation_loss
from spikeseg.training.patches import PatchTrainer
from spikeseg.training.predict import predict_views
from spikeseg.training.run_folder import RunFolder, RunRecord, load_checkpoint, prepare_run, twin_run_for

#: training cases the twin-to-SNN conversion is fitted on (the first of the fold's training cases)
CONVERSION_CASES = 3


def param_groups(model: SliceSegNet, lr: float, readout_scale: float) -> list[dict[str, Any]]:
    """The readout at ``readout_scale`` x the learning rate, everything else at ``lr``.

    Why: the SNN's readout sees binary spikes at a rate of a few percent, so with Adam's
    ~lr-sized steps its logits need hundreds of updates to leave the 1 % prior; the twin's
    readout sees dense analog activations and gets there several times sooner."""
    readout = {id(p) for p in model.readout.parameters()}
    rest = [p for p in model.parameters() if id(p) not in readout]
    return [{"params": rest, "lr": lr}, {"params": list(model.readout.parameters()), "lr": lr * readout_scale}]


# ---- the slice trainers -------------------------------------------------------------------

class SliceTrainer(Trainer):
    """A view model (the SNN or a twin) on slice sequences: the model, its optimiser with the
    readout's own rate, one epoch of batches and per-view validation. Subclasses say how a
    batch of sequences becomes updates (:meth:`train_batch`)."""

    def __init__(self, cfg: TrainConfig, *args: Any, **kwargs: Any) -> None:
        self.sampling = cfg.resolved_window_sampling()
        self.burn_in = cfg.resolved_burn_in()
        super().__init__(cfg, *args, **kwargs)

    def build_model(self) -> tuple[ModelConfig, SliceSegNet]:
        """(its config, the model), warm-started (and a distillation teacher) as asked."""
        built = build_view_model(self.cfg, self.train_cases[:CONVERSION_CASES], self.device)
        self.conversion, self.teacher = built.conversion, built.teacher
        return built.model_cfg, built.model

    def optimiser(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        return torch.optim.Adam(param_groups(self.model, cfg.lr, cfg.resolved_readout_lr_scale()), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)

    # -- one optimiser update ---------------------------------------------------------------
    def _update(self, x: torch.Tensor, y: torch.Tensor, state: list[torch.Tensor] | None):
        self.activity.begin_update()
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits, state = self.net(x, state, reset_every_step=self.cfg.slices.state_reset)
            loss = bce_dice_loss(logits, y)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits, _ = self.teacher(x)
                loss = loss + self.cfg.slices.distill * distillation_loss(logits, teacher_logits)
        self.descend(loss)
        self.activity.end_update(self.epoch + 1)
        return float(loss.detach()), state

    def _batches(self, rng: np.random.Generator) -> list[list[CachedCase]]:
        order = rng.permutation(len(self.train_cases))
        bs = self.cfg.batch_size
        batches = [[self.train_cases[i] for i in order[k:k + bs]] for k in range(0, len(order), bs)]
        usable = len(batches) - len(batches) % self.world if len(batches) >= self.world else len(batches)
        return batches[:usable][self.rank::self.world]  # equal step counts on every rank

    def train_epoch(self) -> float:
        rng = seed_everything(self.cfg.seed * 100003 + self.epoch + 1)
        self.net.train()
        self.activity.recording(True)
        losses = []
        batches = self._batches(rng)
        bar = tqdm(batches, desc=f"{self.cfg.view} epoch {self.epoch + 1}/{self.cfg.epochs}", unit="batch",
                   leave=False, disable=not self.cfg.progress or self.rank != 0)
        start = self.progress()
        for i, batch in enumerate(bar):
            self.ramp_qcfs(start + self.epoch_share * i / len(batches))
            seqs = [view_sequence(*self.augmenter(*c.load(), seed=int(rng.integers(2**31))), self.cfg.view)
                    for c in batch]
            x = torch.from_numpy(np.stack([s[0] for s in seqs])).to(self.device)
            y = torch.from_numpy(np.stack([s[1] for s in seqs])).to(self.device)
            losses += self.train_batch(x, y, rng)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        self.activity.recording(False)
        return float(np.mean(losses)) if losses else math.nan

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> list[float]:
        """The updates one batch of sequences (``x``: (B, T, C, H, W)) makes; their losses."""
        raise NotImplementedError

    def _sequential_windows(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator,
                            window: int) -> list[float]:
        """Windows of ``window`` slices front to back through each volume, the state carried
        (detached) from one to the next: the paper's FPTT, TBPTT, and BPTT with one window."""
        state = None
        losses = []
        for k in range(0, x.shape[1], window):
            if state is not None:
                state = [s.detach() for s in state]
            xw, yw = x[:, k:k + window], y[:, k:k + window]
            keep = self.cfg.slices.empty_keep
            if keep < 1.0 and not bool(yw.any()) and rng.random() >= keep:
                with torch.no_grad():  # no tumour here: advance the state, skip the update
                    _, state = self.net(xw, state, reset_every_step=self.cfg.slices.state_reset)
                continue
            loss, state = self._update(xw, yw, state)
            losses.append(loss)
        return losses

    def _shuffled_slices(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> list[float]:
        """Updates on batch x window slices drawn without replacement from the batch's volumes
        (``x``: (B, T, C, H, W)), each slice at its own (case, position): the twin's sampling.

        A stateful model sees each slice after its ``burn_in`` predecessors run from the zero
        state as at inference (fewer at the start of a volume, as there), so its membranes
        are warm and the update is per slice (FPTT's K = 1), with no state carried between
        updates. Why not windows front to back: consecutive updates then see near copies of one
        slice position, and ET, under 0.1 % of the grid, sits in few of them
        (docs/results/fidelity-lab-record.md)."""
        b, t = x.shape[:2]
        xs, ys = x.flatten(0, 1), y.flatten(0, 1)
        perm = torch.from_numpy(rng.permutation(b * t)).to(self.device)
        step = b * self.cfg.slices.window
        warm = self.burn_in > 0 and self.model.stateful
        losses = []
        for k in range(0, b * t, step):
            idx = perm[k:k + step]
            state = self._warm_state(x, idx // t, idx % t) if warm else None
            loss, _ = self._update(xs[idx, None], ys[idx, None], state)
            losses.append(loss)
        return losses

    @contextlib.contextmanager
    def _as_at_inference(self) -> Iterator[None]:
        """Dropout off for a burn-in: its slices only set the state a sampled slice is entered
        with, and at inference that state comes without dropout (dropping units there also cost
        9 % of an SNN epoch on a CPU: one more dropout mask per layer and update). The model's
        mode is restored as it was found."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)

    def _warm_state(self, x: torch.Tensor, cases: torch.Tensor, slices: torch.Tensor) -> list[torch.Tensor]:
        """The state each (case, slice) pair is entered with: its ``burn_in`` predecessors run
        from the zero state, as at inference; a slice nearer the volume's start than that gets
        only the predecessors it has (its state stays zero until its first one)."""
        state = self.model.init_state(len(cases), *x.shape[-2:], device=x.device, dtype=x.dtype)
        with self._as_at_inference():
            for back in range(self.burn_in, 0, -1):
                pos = slices - back
                live = (pos >= 0).to(x.dtype).view(-1, 1, 1, 1)
                _, new = self.model.step(x[cases, pos.clamp(min=0)], state)
                state = [s * live for s in new]
        return state

    def _random_windows(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> list[float]:
        """As many updates as a front-to-back pass, each on a window at a random position.

        Walking each volume front to back makes consecutive updates near copies of each other,
        and most windows hold no tumour; the stateless twin draws shuffled slices instead and
        learned in 3 epochs what the SNN had not learned in 10 (hard phantoms, 4 mm). Here each
        update takes K slices at a random start (with probability ``tumour_share`` one that
        holds tumour), after ``burn_in`` slices run as at inference from the zero state, so the
        membranes are warm as they are at inference (a PLIF with tau 2 forgets in a few slices)."""
        t, window = x.shape[1], min(self.cfg.slices.window, x.shape[1])
        tumour = np.flatnonzero(y.flatten(2).any(2).any(0).cpu().numpy())
        losses = []
        for _ in range(math.ceil(t / window)):
            if tumour.size and rng.random() < self.cfg.slices.tumour_share:
                start = int(rng.choice(tumour)) - int(rng.integers(window))
            else:
                start = int(rng.integers(t - window + 1))
            start = min(max(start, 0), t - window)
            lo = max(0, start - self.burn_in)
            state = None
            if lo < start:
                with self._as_at_inference():
                    _, state = self.net(x[:, lo:start], None, reset_every_step=self.cfg.slices.state_reset)
            loss, _ = self._update(x[:, start:start + window], y[:, start:start + window], state)
            losses.append(loss)
        return losses

    def evaluation_weights(self) -> contextlib.AbstractContextManager:
        if self.fptt is not None and self.cfg.slices.eval_average:
            return self.fptt.averaged_weights()
        return contextlib.nullcontext()

    def validate(self) -> dict[str, float]:
        with self.evaluation_weights():
            loaded = [case.load() for case in self.val_cases]
            probs = predict_views(self.model, [np.asarray(image) for image, _ in loaded], self.cfg.view,
                                  self.device, reset_every_step=self.cfg.slices.state_reset,
                                  both_ways=self.cfg.slices.val_both_ways)
        return validation_scores(zip(probs, (regions for _, regions in loaded)))

    def unfinished(self) -> bool:
        """Whether the model has QCFS activations not yet switched on, or still mixed with the ReLU."""
        return any(not m.complete for m in qcfs_layers(self.model).values())

    def ramp_qcfs(self, done: float) -> None:
        """Bring a QCFS twin's step in over the first half of its phase: ``done`` is the share of
        the budget spent at this update (past the budget: the step alone)."""
        layers = qcfs_layers(self.model)
        if not layers or not all(m.active for m in layers.values()):
            return
        start = 1.0 - self.cfg.slices.qcfs_share
        mix = 1.0 if done >= 1.0 else (done - start) / (self.cfg.slices.qcfs_share / 2)
        for m in layers.values():
            m.set_mix(mix)

    def before_epoch(self) -> None:
        """Switch a QCFS twin's activations on once the coming epoch would end inside the
        budget's last ``--qcfs-share``: each level fitted to what its ReLU receives (then ramped
        in by :meth:`ramp_qcfs`), and the best checkpoint kept from the step alone only, since
        the conversion reads the step."""
        if all(m.active for m in qcfs_layers(self.model).values()):
            return
        if self.progress() + self.epoch_share <= 1.0 - self.cfg.slices.qcfs_share:
            return
        chosen = start_qcfs(self.model, [c.load() for c in self.train_cases[:CONVERSION_CASES]], self.cfg.view)
        self.ramp_qcfs(self.progress())
        self.best_score, self.best_epoch = -math.inf, self.epoch
        if self.rank == 0:
            levels = ", ".join(f"{v:.2f}" for v in chosen["levels"].values())
            log.info(f"[{self.cfg.view}] epoch {self.epoch + 1}: QCFS phase begins (levels {levels}, steps at "
                     f"{chosen['threshold_share']:.3g} x level)")


class StandardTrainer(SliceTrainer):
    """``standard``: the stateless twin on shuffled slices, as many updates as ``fptt`` makes."""

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> list[float]:
        return self._shuffled_slices(x, y, rng)


class TBPTTTrainer(SliceTrainer):
    """``tbptt``: updates on ``--window`` slices at a time, drawn as ``--window-sampling`` says
    (shuffled slices, random windows, or windows front to back with the state carried)."""

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> list[float]:
        if self.sampling == "shuffled":
            return self._shuffled_slices(x, y, rng)
        if self.sampling == "random":
            return self._random_windows(x, y, rng)
        return self._sequential_windows(x, y, rng, self.cfg.slices.window)


class FPTTTrainer(TBPTTTrainer):
    """``fptt``: TBPTT's updates with FPTT's regulariser and running mean (:mod:`spikeseg.training.fptt`);
    memory stays flat in the sequence length."""

    def fptt_optimiser(self) -> FPTT | None:
        return FPTT(self.model.parameters(), self.opt, self.cfg.slices.alpha)


class BPTTTrainer(SliceTrainer):
    """``bptt``: one update per whole sequence."""

    def train_batch(self, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> list[float]:
        return self._sequential_windows(x, y, rng, x.shape[1])


#: ``--trainer`` -> its class; :meth:`TrainConfig.resolved_trainer` checks the name against the arch
TRAINER_CLASSES: dict[str, type[Trainer]] = {"standard": StandardTrainer, "tbptt": TBPTTTrainer,
                                             "fptt": FPTTTrainer, "bptt": BPTTTrainer, "patches": PatchTrainer}


class ViewModel(NamedTuple):
    model_cfg: ModelConfig
    model: SliceSegNet
    #: what :func:`~spikeseg.training.conversion.balance` chose, when the SNN was converted
    conversion: dict[str, Any] | None
    #: the frozen twin, with ``--distill``
    teacher: SliceSegNet | None


def build_view_model(cfg: TrainConfig, calibration: list[CachedCase], device: torch.device) -> ViewModel:
    """The model ``cfg`` asks for, before any training: with ``--init-from``, started from the
    view's twin (converted on the ``calibration`` cases, or copied). One function, so the
    trainer and the benchmarks that study the start (``benchmarks.binarisation``) build it alike."""
    s = cfg.slices
    if s.reset != "zero" and cfg.arch != "spiking-useg":
        raise InputError(None, f"--reset {s.reset} is how a spiking neuron resets; {cfg.arch} has none")
    model_cfg = ModelConfig.preset(cfg.arch, cfg.preset, tau_min=s.tau_min, init_tau=cfg.resolved_init_tau(),
                                   norm_gain=s.norm_gain, activation=cfg.resolved_twin_activation(),
                                   learn_threshold=s.learn_threshold, surrogate_width=s.surrogate_width,
                                   neuron=s.neuron, reset=s.reset, readout_input=s.readout_input)
    model = build_model(model_cfg)
    conversion, teacher = None, None
    if s.distill and not s.init_from:
        raise InputError(None, "--distill needs --init-from TWIN_RUN (the twin is the teacher)")
    if s.init_from:
        twin_run = twin_run_for(Path(s.init_from), cfg.view)
        if s.convert not in ("balance", "copy"):
            raise InputError(None, f"unknown --convert {s.convert!r}; choose balance or copy")
        warm_start(model, twin_run)
        twin = frozen_teacher(model, twin_run, device) if s.convert == "balance" or s.distill else None
        if twin is not None and s.convert == "balance":
            conversion = balance(model.to(device), twin, [c.load() for c in calibration], cfg.view,
                                 reset_every_step=s.state_reset)
        if s.distill:
            teacher = twin
    return ViewModel(model_cfg, model, conversion, teacher)


def _twin_checkpoint(model: SliceSegNet, run: Path) -> dict[str, Any]:
    """A useg run's best checkpoint, refused unless its topology is ``model``'s."""
    ckpt = load_checkpoint(RunFolder(run).best)
    twin = ModelConfig.from_dict(ckpt["model_config"])
    if twin.widths != model.cfg.widths or twin.arch == "useg-clstm":
        raise InputError(run, f"cannot warm-start from a {twin.arch} of widths {list(twin.widths)}: "
                              f"need a useg run of widths {list(model.cfg.widths)}")
    return ckpt


def warm_start(model: SliceSegNet, run: Path) -> None:
    """Start a Spiking U-Seg-Net from a trained twin's weights (hybrid training: Rathi et al.,
    ICLR 2020; Yue et al., Front. Neurosci. 2023). Same topology, so every conv and norm maps
    one to one; only the neurons' own parameters (tau, threshold) start fresh."""
    ckpt = _twin_checkpoint(model, run)
    # a QCFS twin's levels are read by the conversion (training.conversion.balance), not copied
    qcfs_keys = tuple(".act" + k for k in own_state_keys())
    weights = {k: v for k, v in ckpt["model"].items() if not k.endswith(qcfs_keys)}
    result = model.load_state_dict(weights, strict=False)
    neuron_keys = [k for k in result.missing_keys if k.endswith((".act.w", ".act.theta"))]
    if result.unexpected_keys or len(neuron_keys) != len(result.missing_keys):
        raise InputError(run, f"weights do not map one to one (missing {result.missing_keys}, "
                              f"unexpected {result.unexpected_keys})")


def frozen_teacher(model: SliceSegNet, run: Path, device: torch.device) -> SliceSegNet:
    """The twin ``model`` was started from, frozen, for ``--distill``."""
    ckpt = _twin_checkpoint(model, run)
    teacher = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    teacher.load_state_dict(ckpt["model"])
    teacher.eval().requires_grad_(False)
    return teacher.to(device)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train every requested view; returns a summary per view."""
    rank, world, local_rank = init_distributed()
    out = Path(cfg.out)
    volume = cfg.arch in VOLUME_ARCHS
    if volume and cfg.view != VOLUME:
        raise InputError(None, f"{cfg.arch} sees the whole volume and has no views: drop --view {cfg.view}")
    views = [VOLUME] if volume else parse_views(cfg.view)
    for check in (cfg.resolved_trainer, cfg.resolved_lr_decay_to, cfg.resolved_init_tau, cfg.resolved_burn_in,
                  cfg.resolved_twin_activation):
        check()  # a contradictory configuration is refused before anything is written
    params = PreprocessParams(spacing_mm=(cfg.spacing_mm,) * 3, normalisation=cfg.normalisation)
    case_dirs = find_cases(cfg.data)
    cache_root = cache_folder(cfg, out)
    if rank == 0:
        cases = preprocess_dataset(Path(cfg.data), cache_root, params, progress=cfg.progress)
    if world > 1:
        dist.barrier()
    if rank != 0:
        cases = preprocess_dataset(Path(cfg.data), cache_root, params, progress=False)
    train_ids, val_ids = kfold_split([c.case_id for c in cases], cfg.folds, cfg.fold, cfg.seed)
    summary: dict[str, Any] = {}
    for view in views:
        vcfg = replace(cfg, view=view)
        run = out / view if not volume and (len(views) > 1 or cfg.view == "all") else out
        if rank == 0:
            prepare_run(run, vcfg, resume, overwrite)
        if world > 1:
            dist.barrier()
        trainer = TRAINER_CLASSES[vcfg.resolved_trainer()](vcfg, run, cases, train_ids, val_ids, rank, world,
                                                           local_rank)
        last = RunFolder(run).last
        if resume and last.exists():
            trainer.restore(load_checkpoint(last))
            if rank == 0:
                log.info(f"[{view}] resuming after epoch {trainer.epoch}")
        if rank == 0:
            record = RunRecord(replace(vcfg, trainer=trainer.trainer),
                               trainer.model_cfg.to_dict(), trainer.conversion, str(trainer.device),
                               str(trainer.amp) if trainer.amp else "float32", world, distributed_backend(),
                               data_fingerprint(case_dirs), torch.__version__)
            RunFolder(run).write_setup(record, params, {"fold": cfg.fold, "folds": cfg.folds, "train": train_ids,
                                                        "validation": val_ids})
            log.debug(f"[{view}] {run}: {trainer.trainer} trainer on {record.device} ({record.amp_dtype}, "
                      f"{torch.get_num_threads()} threads, world {world}), {len(train_ids)} training and "
                      f"{len(val_ids)} validation cases, {cfg.spacing_mm} mm, augment {cfg.augment}")
        result = trainer.fit()
        if world > 1:
            digests: list[str | None] = [None] * world
            dist.all_gather_object(digests, params_digest(trainer.model))
            result["rank_param_digests"] = digests
        if rank == 0:
            RunFolder(run).write_summary(result)
        summary[view] = result
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary


