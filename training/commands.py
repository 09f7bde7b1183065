"""The training stage's subcommands: phantoms (built on nilearn's MNI152 template) and train.
Implementations are imported when a command runs, so ``spikeseg --help`` never imports torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spikeseg.snn.architectures import ARCHITECTURES
from spikeseg.snn.architectures import help_text as architectures_help
from spikeseg.training.config import WINDOW_SAMPLING, TrainConfig  # torch-free: --help stays light


def _phantoms(args: argparse.Namespace) -> int:
    from spikeseg.training.phantoms import generate, parse_difficulty

    written = generate(args.out, args.cases, args.seed, args.size, parse_difficulty(args.difficulty),
                       overwrite=args.overwrite, progress=not args.quiet, family=args.family)
    print(f"wrote {len(written)} {args.family} phantom cases to {args.out}")
    return 0


#: TrainConfig fields whose command-line option has another name, or says the opposite
CLI_NAMES = {"spacing_mm": "spacing"}
NEGATED = {"amp": "no_amp", "progress": "quiet"}
#: what a config file never sets: where this run goes, and how it shows progress
NOT_FROM_FILE = ("out", "progress", "version")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's config from the parsed options (each TrainConfig field from the option of the same
    name), with the architecture's own defaults where the options are silent."""

    given: dict[str, object] = {}
    for name in TrainConfig.flat_names():
        if name in NEGATED:
            given[name] = not getattr(args, NEGATED[name])
        elif hasattr(args, CLI_NAMES.get(name, name)) and name != "version":
            value = getattr(args, CLI_NAMES.get(name, name))
            given[name] = str(value) if isinstance(value, Path) else value
    return TrainConfig.for_arch(**given)


def config_defaults(path: Path) -> dict[str, object]:
    """``--config FILE``: a run's ``config.json`` (or a file in its schema) as the train options'
    defaults, so options given on the command line win; where the run goes is never taken from it."""
    from spikeseg.training.run_folder import train_settings

    values = train_settings(path)
    out = {}
    for name, value in values.items():
        if name in NOT_FROM_FILE:
            continue
        if name in NEGATED:
            out[NEGATED[name]] = not value
        else:
            out[CLI_NAMES.get(name, name)] = value
    return out


def _train(args: argparse.Namespace) -> int:
    from spikeseg.training.trainer import train

    train(train_config(args), resume=args.resume, overwrite=args.overwrite)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add this stage's subcommands to the ``spikeseg`` dispatcher (which imports this module,
    hence the import here)."""
    from spikeseg.cli import add_command

    ph = add_command(sub, "phantoms", needs=("nilearn",), help="write phantom BraTS 2021-layout cases (MNI152 anatomy)",
                     description="Write phantom cases in the BraTS 2021 folder layout, built on "
                                 "the MNI152 template nilearn ships. Deterministic for a seed.")
    ph.add_argument("out", type=Path, help="folder to write case folders into")
    ph.add_argument("--cases", type=int, default=3, help="number of cases (default 3)")
    ph.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ph.add_argument("--size", choices=["full", "small"], default="small",
                    help="full: 240x240x155 at 1 mm; small: 120x120x78 at 2 mm (default)")
    ph.add_argument("--difficulty", default="medium",
                    help="easy, medium (default), hard, or a number 0..1: tumour contrast, "
                         "texture, patchy enhancement, foci, bias field and noise")
    ph.add_argument("--family", choices=["standard", "wide", "heldout"], default="standard",
                    help="standard (default): one contrast table; wide: per case, contrasts drawn within the "
                         "orderings that define the sub-regions, tumours from under 1 mL to over 200 mL in 1-4 "
                         "foci, weak to strong bias and noise, 1-4 mm slices, stored scale and type varied; "
                         "heldout: contrasts, bias, noise, slice thickness (4-6 mm) and scale outside wide's "
                         "ranges, for measuring transfer to data never trained on")
    ph.add_argument("--overwrite", action="store_true", help="replace existing case folders")
    ph.set_defaults(handler=_phantoms)

    tr = add_command(sub, "train", needs=("torch",), help="train a view model (Spiking U-Seg-Net or a twin)",
                     description="Train one model per view on a folder of BraTS cases. FPTT "
                                 "updates every --window slices with the membrane state detached "
                                 "between windows, so memory does not grow with the slice count. "
                                 "Uses CUDA when present (mixed precision); run under torchrun for "
                                 "several GPUs (DistributedDataParallel).")
    tr.add_argument("--config", type=Path, metavar="FILE",
                    help="a run's config.json (or a JSON file in its schema): its settings are the defaults, "
                         "options given here win; --out is never taken from it, and what a run recorded "
                         "besides its settings (model_config, conversion) is ignored")
    tr.add_argument("--data", type=Path, required=True, help="folder of labelled case folders")
    tr.add_argument("--out", type=Path, required=True, help="run folder (RUN/<view>/ with --view all)")
    tr.add_argument("--arch", choices=list(ARCHITECTURES), default="spiking-useg",
                    help=f"{architectures_help()} (default spiking-useg)")
    tr.add_argument("--view", help="sagittal, coronal, axial or all (default axial; the 3D models have none)")
    tr.add_argument("--trainer", choices=["fptt", "tbptt", "bptt", "standard", "patches"],
                    help="default: fptt for spiking-useg, standard for useg, tbptt for useg-clstm, "
                         "patches for the 3D models")
    tr.add_argument("--preset", choices=["tiny", "small", "paper"], default="tiny",
                    help="model size: tiny (CPU tests, demo), small, paper (the paper's scale, for a GPU; "
                         "unet3d-lite's paper preset has the paper's 340,596 parameters)")
    tr.add_argument("--patch", type=int,
                    help="3D models: patch side in voxels (default 64), a multiple of 4 for unet3d-lite, unet3d "
                         "and me-unet, of 16 for cascade-me-unet; the runtime slides the same patch over the case")
    tr.add_argument("--patches-per-case", type=int,
                    help="3D models: random patches per training case per epoch (default 4)")
    tr.add_argument("--patch-tumour-share", type=float,
                    help="3D models: share of patches centred on a tumour voxel, the rest placed uniformly "
                         "(default 0.33, nnU-Net's foreground oversampling)")
    tr.add_argument("--weight-decay", type=float,
                    help="weight decay (default 1e-5 with Adam; unet3d-lite: 5e-4 with AdamW, the paper's)")
    tr.add_argument("--momentum", type=float,
                    help="SGD with this momentum instead of Adam/AdamW (default: off; the cascade models: 0.9)")
    tr.add_argument("--lr-decay", type=float,
                    help="multiply the learning rate by 1 - LR_DECAY after every epoch instead of halving it on "
                         "a plateau (default: off; the cascade models: 0.01, their paper's)")
    tr.add_argument("--lr-decay-to", type=float, metavar="RATIO",
                    help="decay the learning rate exponentially to RATIO x --lr over the run's budget (--epochs "
                         "or --max-minutes, whichever ends first) instead of halving it on a plateau; 1 = off "
                         "(default: 0.075 for a spiking-useg converted from a twin with --init-from, else off)")
    tr.add_argument("--channel-out", type=float,
                    help="3D models: probability, per modality and patch, of replacing the modality by Gaussian "
                         "noise (channel-out augmentation; default 0; the cascade models: 0.1, their paper's)")
    tr.add_argument("--early-stop", type=int, metavar="EPOCHS",
                    help="stop after EPOCHS epochs without a better validation Dice (default: off; "
                         "unet3d-lite: 10)")
    tr.add_argument("--fold", type=int, default=0, help="validation fold of --folds (default 0 of 5)")
    tr.add_argument("--folds", type=int, default=5, help="cross-validation folds, split by case (default 5)")
    tr.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30; see --max-minutes)")
    tr.add_argument("--batch-size", type=int,
                    help="sequences (volumes) per batch (default 4); 3D models: patches per batch (unet3d-lite 2, "
                         "the cascade models 4)")
    tr.add_argument("--window", type=int, default=4, help="slices per update K (fptt, tbptt; default 4)")
    tr.add_argument("--alpha", type=float, default=0.1, help="FPTT regularisation strength (default 0.1)")
    tr.add_argument("--lr", type=float,
                    help="learning rate (default 1e-3 with Adam, the Spiking U-Seg-Net paper's; unet3d-lite: "
                         "5e-4 with AdamW, its paper's)")
    tr.add_argument("--spacing", type=float, default=2.0,
                    help="model voxel spacing in mm (default 2: 80x96x76 grid; the paper used 1)")
    tr.add_argument("--tau-min", type=float, default=1.0, help="floor under PLIF tau (default 1: none)")
    tr.add_argument("--init-tau", type=float,
                    help="PLIF's initial membrane time constant (learnable; the membrane keeps 1 - 1/tau of "
                         "its charge per slice). Default 2 (the paper's), and 1.25 x --tau-min after "
                         "--init-from with --convert balance (closer to the stateless twin; README \"Fidelity\")")
    tr.add_argument("--readout-input", choices=["spikes", "membrane"], default="spikes",
                    help="spiking-useg: the readout integrator reads the last layer's spikes (binary) or its "
                         "membrane potential (analog; the 3-channel readout then costs MACs)")
    tr.add_argument("--readout-lr-scale", type=float,
                    help="learning rate of the readout conv relative to --lr (default: 10 for spiking-useg, "
                         "the SNN recipe; 1 for the twins)")
    tr.add_argument("--window-sampling", choices=WINDOW_SAMPLING,
                    help="fptt/tbptt: how updates draw slices. shuffled (default for spiking-useg, the SNN "
                         "recipe): each update takes --batch-size x --window slices at random positions of "
                         "--batch-size volumes, as the twin's trainer does, each after --burn-in slices run "
                         "as at inference; sequential (default for useg-clstm, the paper's): windows of "
                         "--window slices front to back through each volume, the state carried between them; "
                         "random: each update a window at a random (tumour-biased) position")
    tr.add_argument("--burn-in", type=int,
                    help="shuffled and random sampling: slices run as at inference (no gradient, no dropout) "
                         "before each sampled slice or window, to warm the state (default: random 8; shuffled "
                         "as many as bring the zero start's share of a PLIF membrane to 20 %%: 1 at tau 1.25, "
                         "3 at tau 2; none with --state-reset, which discards the warmed state)")
    tr.add_argument("--tumour-share", type=float, default=0.5,
                    help="random windows: share of windows placed on tumour slices (default 0.5)")
    tr.add_argument("--neuron", choices=["plif", "snntorch-leaky"], default="plif",
                    help="spiking-useg: PLIF (the paper's; learnable tau, input divided by tau, hard reset) "
                         "or snnTorch's Leaky (learnable beta, reset to zero one step late)")
    tr.add_argument("--reset", choices=["zero", "subtract"], default="zero",
                    help="spiking-useg: after a spike the membrane goes to zero (default; spikingjelly's "
                         "PLIF) or the threshold is subtracted, keeping the residual (the paper's own "
                         "equation); spikes stay binary either way")
    tr.add_argument("--twin-activation", choices=["relu", "qcfs"], default="relu",
                    help="useg: ReLU (default), or ReLU then QCFS for the last --qcfs-share of the budget: the "
                         "step lambda*[x >= lambda/2] a converted SNN computes at one time step per slice "
                         "(Bu et al., ICLR 2022), so the SNN converted from this twin starts where it ends")
    tr.add_argument("--qcfs-share", type=float, default=0.5,
                    help="with --twin-activation qcfs: the share of the budget (epochs or --max-minutes) "
                         "trained with QCFS, the step ramped in over its first half; the best checkpoint is "
                         "kept from the step alone (default 0.5)")
    tr.add_argument("--norm-gain", type=float, default=1.0,
                    help="spiking-useg: initial GroupNorm scale before each PLIF layer; 2 = tdBN's "
                         "threshold-matched scale for tau 2 (default 1)")
    tr.add_argument("--learn-threshold", action="store_true",
                    help="spiking-useg: a learnable firing threshold per layer (DIET-SNN)")
    tr.add_argument("--surrogate-width", type=float, default=1.0,
                    help="spiking-useg: width w of the arctan surrogate 1/(1+(pi x/w)^2); 1 = the paper's")
    tr.add_argument("--init-from", type=Path, metavar="TWIN_RUN",
                    help="spiking-useg: start from a trained useg run's weights (same preset), then train")
    tr.add_argument("--convert", choices=["balance", "copy"], default="balance",
                    help="with --init-from: balance (default) sets each layer's threshold and folds its spike "
                         "scale into the next weights so spikes approximate the twin's ReLUs (threshold "
                         "balancing, fitted on 3 training cases); copy takes the twin's weights as they are")
    tr.add_argument("--distill", type=float, default=0.0, metavar="WEIGHT",
                    help="with --init-from: add WEIGHT x the BCE between the SNN's per-region probabilities "
                         "and the twin's on the same slices (knowledge distillation); default 0 = off")
    tr.add_argument("--empty-keep", type=float, default=1.0,
                    help="fptt/tbptt with sequential windows: share of tumour-free windows that get an update "
                         "(the rest only advance the state); default 1 = all")
    tr.add_argument("--eval-average", action="store_true",
                    help="validate and keep best weights using FPTT's running mean wbar")
    tr.add_argument("--state-reset", action="store_true",
                    help="ablation: reset the state every slice (no inter-slice context)")
    tr.add_argument("--val-both-ways", action="store_true",
                    help="validate a stateful model as the runtime runs it by default: each "
                         "sequence front to back and back to front, the two passes averaged")
    tr.add_argument("--augment", choices=["default", "light", "none"], default="default",
                    help="training-time augmentation through TorchIO, seeded, one spatial transform per volume "
                         "(a slice model's whole sequence) or per patch: default = nnU-Net v2's set (rotation, "
                         "scaling, mirroring, noise, blur, gamma, simulated low resolution) plus an MRI bias "
                         "field; light = mirroring, mild rotation and scaling, gamma; none = the data as it is")
    tr.add_argument("--seed", type=int, default=0, help="seed for weights, splits and sampling (default 0)")
    tr.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="auto: CUDA when present (mixed precision), else CPU (default auto)")
    tr.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    tr.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this budget")
    tr.add_argument("--cache", type=Path, metavar="DIR",
                    help="keep the preprocessed cases here, shared by every run on the same data and grid (a "
                         "folder per data set and preprocessing record; default: $SPIKESEG_CACHE, else "
                         "RUN/preprocessed)")
    tr.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    tr.add_argument("--overwrite", action="store_true", help="start again in an existing run folder")
    tr.set_defaults(handler=_train)
    tr.config_defaults = config_defaults  # read by spikeseg.cli before parsing: the file's settings become defaults
