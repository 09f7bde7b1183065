"""The training pieces no end-to-end run pins down: the loss against a numpy reference, the
k-fold split, the membrane reset, and every trainer taking real update steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spikeseg.runtime.errors import InputError
from spikeseg.snn.models import ModelConfig, build_model
from spikeseg.training.data import kfold_split
from spikeseg.training.losses import bce_dice_loss
from spikeseg.training.predict import predict_view, predict_views
from tests.helpers import run_cli


def _reference_loss(logits: np.ndarray, target: np.ndarray) -> float:
    """0.5 BCE + 0.5 soft Dice (eps 1e-5) per region over the batch, regions absent from the
    target left out of the Dice mean, written from the formula in plain numpy."""
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    bce = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    terms = []
    for r in range(target.shape[-3]):
        s, t = p[..., r, :, :], target[..., r, :, :]
        if t.sum() > 0:
            terms.append(1 - (2 * (s * t).sum() + 1e-5) / (s.sum() + t.sum() + 1e-5))
    dice = float(np.mean(terms)) if terms else 0.0
    return 0.5 * bce + 0.5 * dice


@pytest.mark.parametrize("absent", [(), (1,), (0, 1, 2)])
def test_loss_matches_the_formula(absent: tuple[int, ...]) -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (2, 5, 3, 8, 9)).astype(np.float32)
    target = (rng.random((2, 5, 3, 8, 9)) > 0.8).astype(np.float32)
    target[..., list(absent), :, :] = 0
    got = float(bce_dice_loss(torch.from_numpy(logits), torch.from_numpy(target)))
    assert got == pytest.approx(_reference_loss(logits, target), rel=1e-5)


def test_kfold_split_partitions_the_cases_by_seed() -> None:
    ids = [f"c{i:02d}" for i in range(11)]
    vals = []
    for fold in range(5):
        train, val = kfold_split(ids, 5, fold, seed=7)
        assert sorted(train + val) == ids and not set(train) & set(val)
        assert 2 <= len(val) <= 3
        vals += val
    assert sorted(vals) == ids  # every case is validated exactly once
    assert kfold_split(ids, 5, 0, seed=7) == kfold_split(list(reversed(ids)), 5, 0, seed=7)
    assert kfold_split(ids, 5, 0, seed=7) != kfold_split(ids, 5, 0, seed=8)
    with pytest.raises(InputError, match="cannot make"):
        kfold_split(ids[:3], 5, 0, seed=0)
    with pytest.raises(InputError, match="outside"):
        kfold_split(ids, 5, 5, seed=0)


def test_membrane_reset_every_slice_makes_slices_independent() -> None:
    """--state-reset: each slice's output is what it gives from a zero state, whatever came
    before it; without the reset the history changes the output."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("spiking-useg", "tiny")).eval()
    x = torch.rand(1, 6, 4, 16, 16) * 3
    with torch.no_grad():
        reset, _ = model(x, None, reset_every_step=True)
        stateful, _ = model(x, None)
        alone = torch.cat([model(x[:, k:k + 1], None)[0] for k in range(6)], dim=1)
    torch.testing.assert_close(reset, alone, rtol=0, atol=0)
    assert not torch.equal(stateful[:, 1:], alone[:, 1:])


@pytest.mark.parametrize("arch", ["spiking-useg", "useg"])
def test_predicting_several_cases_at_once_equals_one_at_a_time(arch: str) -> None:
    """Validation runs a stateful model's cases as one batch of sequences: each case's
    probabilities are what it gives alone (cases of another shape go in their own batch)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset(arch, "tiny"))
    rng = np.random.default_rng(0)
    images = [rng.random((4, 12, 16, 9), dtype=np.float32) * 3 for _ in range(3)]
    images.append(rng.random((4, 12, 16, 5), dtype=np.float32) * 3)
    together = predict_views(model, images, "axial")
    for image, prob in zip(images, together):
        np.testing.assert_allclose(prob, predict_view(model, image, "axial"), rtol=0, atol=1e-6)
    assert together[0].shape == (3, 12, 16, 9) and together[3].shape == (3, 12, 16, 5)


@pytest.mark.parametrize("arch", ["spiking-useg", "useg"])
def test_predicting_both_ways_averages_the_sequence_and_its_reverse(arch: str) -> None:
    """``both_ways`` (the runtime's default for a stateful model): the mean of the probabilities
    front to back and of the case with its slices reversed, flipped back; the two passes differ
    for the SNN (its membranes carry context), and a stateless twin is unchanged."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.preset(arch, "tiny"))
    image = np.random.default_rng(1).random((4, 12, 16, 9), dtype=np.float32) * 3
    fwd = predict_view(model, image, "axial")
    back = np.flip(predict_view(model, np.ascontiguousarray(np.flip(image, 3)), "axial"), 3)
    both = predict_view(model, image, "axial", both_ways=True)
    np.testing.assert_allclose(both, (fwd + back) / 2, rtol=0, atol=1e-6)
    assert (float(np.abs(fwd - back).max()) > 1e-3) == model.stateful


@pytest.mark.parametrize("arch,trainer,extra", [("spiking-useg", "bptt", []), ("spiking-useg", "tbptt", []),
                                                 ("spiking-useg", "fptt", ["--state-reset"]),
                                                 ("useg-clstm", "tbptt", [])])
def test_every_trainer_takes_update_steps(phantom5: Path, tmp_path: Path, arch: str, trainer: str,
                                          extra: list[str]) -> None:
    """One epoch with each trainer: the run records it, the loss is finite and the weights moved."""
    out = tmp_path / "run"
    r = run_cli("train", "--data", phantom5, "--out", out, "--arch", arch, "--view", "axial", "--trainer", trainer,
                "--preset", "tiny", "--spacing", "6", "--batch-size", "2", "--window", "4", "--epochs", "1",
                "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["trainer"] == trainer and cfg["state_reset"] == ("--state-reset" in extra)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert np.isfinite(ckpt["history"][0]["train_loss"])
    torch.manual_seed(int(cfg["seed"]))
    init = build_model(ModelConfig.from_dict(cfg["model_config"])).state_dict()
    moved = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.equal(v, init[k])]
    assert moved, "no weight changed"


def test_shuffled_sampling_visits_every_slice_once_each_after_its_burn_in() -> None:
    """``--window-sampling shuffled``: updates of batch x window slices that together visit every
    slice of the batch's volumes exactly once, each entered with the state that running its
    ``burn_in`` predecessors from zero gives (torch's own sequence forward is the reference;
    a slice near the start gets the predecessors it has). The burn-in runs without dropout, as
    inference does, and leaves the model training."""
    from types import SimpleNamespace

    from spikeseg.training.trainer import SliceTrainer

    torch.manual_seed(0)
    model = build_model(ModelConfig.preset("spiking-useg", "tiny", dropout=0.5)).train()
    b, t, burn_in = 2, 7, 2
    x = torch.rand(b, t, 4, 16, 16) * 3
    seen: list[tuple[torch.Tensor, list[torch.Tensor]]] = []
    fake = SimpleNamespace(model=model, burn_in=burn_in, device=torch.device("cpu"),
                           cfg=SimpleNamespace(slices=SimpleNamespace(window=3, state_reset=False)))
    fake._warm_state = lambda *a: SliceTrainer._warm_state(fake, *a)
    fake._as_at_inference = lambda: SliceTrainer._as_at_inference(fake)
    fake._update = lambda xs, ys, state: (seen.append((xs, state)), (0.0, None))[1]
    losses = SliceTrainer._shuffled_slices(fake, x, torch.zeros(b, t, 3, 16, 16), np.random.default_rng(1))
    assert len(losses) == math.ceil(b * t / (b * 3)) and [len(xs) for xs, _ in seen] == [6, 6, 2]
    assert model.training
    model.eval()
    flat = x.flatten(0, 1)
    visited = []
    for xs, state in seen:
        for i in range(len(xs)):
            k = next(k for k in range(b * t) if torch.equal(flat[k], xs[i, 0]))
            visited.append(k)
            c, s = divmod(k, t)
            with torch.no_grad():
                _, expected = model(x[c:c + 1, max(0, s - burn_in):s]) if s else (None, model.init_state(1, 16, 16))
            for got, want in zip(state, expected):
                torch.testing.assert_close(got[i:i + 1], want, rtol=0, atol=1e-6)
    assert sorted(visited) == list(range(b * t))


def test_window_sampling_and_burn_in_defaults() -> None:
    """Shuffled slices for the SNN (burn-in from its initial tau: the zero start's share of the
    membrane down to 20 %), sequential windows for the ConvLSTM twin, none to warm after a reset."""
    from spikeseg.training.config import BURN_IN_RESIDUE, TrainConfig

    def cfg(**kw):
        return TrainConfig.of(data="", out="", **kw)

    assert cfg(arch="spiking-useg").resolved_window_sampling() == "shuffled"
    assert cfg(arch="useg-clstm").resolved_window_sampling() == "sequential"
    for tau in (1.25, 2.0, 4.0):
        b = cfg(arch="spiking-useg", init_tau=tau).resolved_burn_in()
        assert (1 - 1 / tau) ** b <= BURN_IN_RESIDUE < (1 - 1 / tau) ** (b - 1)
    assert cfg(arch="spiking-useg", init_tau=1.25).resolved_burn_in() == 1
    assert cfg(arch="spiking-useg", init_tau=2.0).resolved_burn_in() == 3
    assert cfg(arch="spiking-useg", state_reset=True).resolved_burn_in() == 0
    assert cfg(arch="spiking-useg", window_sampling="random").resolved_burn_in() == 8
    assert cfg(arch="spiking-useg", window_sampling="sequential").resolved_burn_in() == 0
    assert cfg(arch="spiking-useg", burn_in=5).resolved_burn_in() == 5
    with pytest.raises(InputError, match="--burn-in must be >= 0"):
        cfg(arch="spiking-useg", burn_in=-1).resolved_burn_in()
    with pytest.raises(InputError, match="unknown --window-sampling"):
        cfg(arch="spiking-useg", window_sampling="zigzag").resolved_window_sampling()


def test_a_run_folder_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    """RunFolder is the one reader of a run's files: a missing config, another run version and a
    torn JSON file are refused by name, never read half-way."""
    from spikeseg.training.config import RUN_VERSION
    from spikeseg.training.run_folder import RunFolder, twin_run_for

    run = RunFolder(tmp_path / "run")
    with pytest.raises(InputError, match="not a training run"):
        run.record()
    run.path.mkdir()
    ran = {"model_config": {}, "conversion": None, "device": "cpu", "amp_dtype": "float32", "world_size": 1,
           "dist_backend": None, "data_fingerprint": "x", "torch": "2"}
    setup = {"version": RUN_VERSION, "data": "d", "out": "o", "view": "axial", **ran}
    run.config_path.write_text(json.dumps({**setup, "version": RUN_VERSION + 1}))
    with pytest.raises(InputError, match=f"run version {RUN_VERSION + 1}"):
        run.record()
    run.config_path.write_text('{"version": ')
    with pytest.raises(InputError, match="unreadable"):
        run.record()
    run.config_path.write_text(json.dumps({k: v for k, v in setup.items() if k != "model_config"}))
    with pytest.raises(InputError, match="malformed run config: no 'model_config'"):
        run.record()
    older = {k: v for k, v in setup.items() if k not in ("conversion", "dist_backend")}  # an earlier run's file
    run.config_path.write_text(json.dumps(older))
    assert (run.record().conversion, run.record().dist_backend) == (None, None)
    run.config_path.write_text(json.dumps(setup))
    record = run.record()
    assert record.settings.view == "axial" and record.device == "cpu"
    assert json.loads(json.dumps(record.to_dict())) == {**json.loads(json.dumps(
        record.settings.flat())), **ran}  # written back flat, as the trainer writes it
    assert run.is_run() and not run.finished() and run.splits() == {}
    assert twin_run_for(tmp_path / "run", "axial") == run.path
    with pytest.raises(InputError, match="is a axial run; the coronal model needs a coronal twin"):
        twin_run_for(tmp_path / "run", "coronal")


def test_runs_share_one_cache_per_data_set_and_grid(phantom_root: Path, tmp_path: Path) -> None:
    """Preprocessed cases are kept per (preprocessing record, data set): a second run on the same
    data and grid reuses them untouched; other data with the same case ids, or another grid, gets
    its own folder, never the first one's arrays."""
    import shutil

    import nibabel as nib

    from spikeseg.runtime.preprocess import PreprocessParams
    from spikeseg.training.data import preprocess_dataset

    params = PreprocessParams(spacing_mm=(6.0,) * 3)
    first = preprocess_dataset(phantom_root, tmp_path / "cache", params, progress=False)
    stamps = [c.image_path.stat().st_mtime_ns for c in first]
    again = preprocess_dataset(phantom_root, tmp_path / "cache", params, progress=False)
    assert [c.image_path for c in again] == [c.image_path for c in first]
    assert [c.image_path.stat().st_mtime_ns for c in again] == stamps
    other = tmp_path / "other"
    shutil.copytree(phantom_root, other)
    victim = sorted(other.glob("*/*_t1.nii.gz"))[0]
    img = nib.load(victim)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine, img.header), victim)  # same id, new data
    theirs = preprocess_dataset(other, tmp_path / "cache", params, progress=False)
    assert theirs[0].image_path.parent != first[0].image_path.parent
    coarser = preprocess_dataset(phantom_root, tmp_path / "cache", PreprocessParams(spacing_mm=(8.0,) * 3),
                                 progress=False)
    assert len({c.image_path.parent for c in (first[0], theirs[0], coarser[0])}) == 3


def test_the_cache_stores_float16_and_hands_out_float32_within_its_precision(phantom_root: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Cached images take half the disk of float32 and come back as float32, each value within
    float16's rounding of the runtime's own preprocessing; a cache of another storage type is
    another folder, never read in place of this one."""
    import spikeseg.training.data as data
    from spikeseg.runtime.case_io import find_cases
    from spikeseg.runtime.preprocess import PreprocessParams, load_model_space

    params = PreprocessParams(spacing_mm=(6.0,) * 3)
    half = data.preprocess_dataset(phantom_root, tmp_path / "cache", params, progress=False)
    assert np.load(half[0].image_path, mmap_mode="r").dtype == np.float16
    image, regions = half[0].load()
    exact = load_model_space(find_cases(phantom_root)[0], params, label="required")
    assert image.dtype == np.float32 and regions.dtype == np.uint8
    np.testing.assert_allclose(image, exact.image, rtol=2 ** -11, atol=2 ** -24)
    assert not np.array_equal(image, exact.image)  # it is float16 that was stored
    monkeypatch.setattr(data, "CACHE_DTYPE", np.float32)
    full = data.preprocess_dataset(phantom_root, tmp_path / "cache", params, progress=False)
    assert full[0].image_path.parent != half[0].image_path.parent
    np.testing.assert_array_equal(full[0].load()[0], exact.image)
    assert half[0].image_path.stat().st_size < 0.55 * full[0].image_path.stat().st_size


def test_a_runs_config_file_is_the_next_runs_defaults_and_the_command_line_wins(phantom5: Path,
                                                                                tmp_path: Path) -> None:
    """``train --config RUN/config.json``: every setting of that run comes back (the file written
    by one run, read by the next), an option given on the command line wins even when it is the
    option's default, --out is never taken from the file, and another version is refused."""
    from spikeseg.cli import build_parser, config_file_defaults
    from spikeseg.training.commands import train_config

    run = tmp_path / "a"
    r = run_cli("train", "--data", phantom5, "--out", run, "--arch", "useg", "--preset", "tiny", "--spacing", "6",
                "--batch-size", "2", "--epochs", "1", "--lr", "3e-3", "--augment", "none", "--seed", "7", "--quiet")
    assert r.returncode == 0, r.stderr
    written = json.loads((run / "config.json").read_text())

    def parsed(*argv: str):
        parser = build_parser()
        config_file_defaults(parser, list(argv))
        return train_config(parser.parse_args(list(argv)))

    again = parsed("train", "--config", str(run / "config.json"), "--out", str(tmp_path / "b")).flat()
    mine = ("out", "progress")  # where the run goes and how it shows progress are this command's
    assert {k: v for k, v in again.items() if k not in mine} == {k: written[k] for k in again if k not in mine}
    assert again["out"] == str(tmp_path / "b")
    changed = parsed("train", "--config", str(run), "--out", str(tmp_path / "c"), "--lr", "1e-3", "--spacing", "2")
    assert (changed.lr, changed.spacing_mm, changed.seed, changed.arch) == (1e-3, 2.0, 7, "useg")
    (tmp_path / "old.json").write_text(json.dumps({**written, "version": 99}))
    r = run_cli("train", "--config", tmp_path / "old.json", "--out", tmp_path / "d")
    assert r.returncode == 2 and "old.json" in r.stderr and "config version 99" in r.stderr
    assert not (tmp_path / "d").exists()
    r = run_cli("train", "--config", run / "config.json")
    assert r.returncode == 2 and "--out" in r.stderr  # where the run goes is always said


def test_every_trainer_name_has_one_class_on_the_shared_loop() -> None:
    """``--trainer`` names (checked torch-free in the config) and the classes the loop runs are
    one set; the slice trainers differ only in how a batch becomes updates."""
    from spikeseg.training.config import TRAINERS
    from spikeseg.training.loop import Trainer
    from spikeseg.training.trainer import TRAINER_CLASSES, FPTTTrainer, SliceTrainer, TBPTTTrainer

    assert set(TRAINER_CLASSES) == set(TRAINERS)
    assert all(issubclass(c, Trainer) for c in TRAINER_CLASSES.values())
    assert not issubclass(TRAINER_CLASSES["patches"], SliceTrainer)
    assert issubclass(FPTTTrainer, TBPTTTrainer) and FPTTTrainer.train_batch is TBPTTTrainer.train_batch
