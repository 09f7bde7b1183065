"""``spikeseg prepare``: registered with the dispatcher; SimpleITK and pydicom load when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from spikeseg.prepare import strip
from spikeseg.runtime.case_io import MODALITIES

PREPARE_EXTRA = "pip install 'spikeseg[prepare]'"


def _prepare(args: argparse.Namespace) -> int:
    from spikeseg.prepare.pipeline import PrepareOptions, prepare
    from spikeseg.prepare.series import read_map

    explicit = read_map(args.map) if args.map else {}
    explicit.update({m: getattr(args, m) for m in MODALITIES if getattr(args, m) is not None})
    result = prepare(args.input, args.out, PrepareOptions(explicit, args.n4, args.case_id, args.threads, args.brain),
                     overwrite=args.overwrite)
    print(f"prepared {result.record.case_id} in {result.seconds['total']:.1f} s: {result.folder} "
          f"(check {result.folder / 'prepare' / 'quicklook.png'}); next: spikeseg segment BUNDLE {result.folder} OUT")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from spikeseg.cli import add_command, add_threads_argument

    p = add_command(sub, "prepare", needs=("SimpleITK", "pydicom"), extra=PREPARE_EXTRA,
                    help="turn scanner data (DICOM series or NIfTI files) into a case segment can read",
                    description="One study in (a folder of DICOM series at any depth, or NIfTI files with any "
                                "names), one BraTS case folder out: the four modalities co-registered to T1ce "
                                "(rigid), mapped to the MNI152 template on the BraTS 240x240x155 1 mm grid "
                                "(affine), skull-stripped (template mask refined by intensity, or HD-BET / "
                                "SynthStrip where installed: --brain; nothing is downloaded). "
                                "Beside them, OUT/prepare/: prepare.json (inputs with sha256, the series chosen "
                                "and why, transforms, checks, timings), the brain mask, the transforms as ITK "
                                ".tfm files, the native T1ce and quicklook.png. spikeseg segment then also "
                                "writes the segmentation on the native T1ce grid. Modalities are named from the "
                                "DICOM tags or file names; two candidates for one modality is an error that lists "
                                "the series: name them with --t1 ... or --map. Exit status: 0 done, 2 bad input "
                                "or a step that failed its check (nothing is written then).")
    p.add_argument("input", type=Path, help="a folder of one study's DICOM series (any depth) or NIfTI files")
    p.add_argument("out", type=Path, help="the case folder to write (its name is the case id unless --case-id)")
    for m in MODALITIES:
        p.add_argument(f"--{m}", type=Path, metavar="PATH",
                       help=f"the {m} series (its folder or one of its files) or NIfTI file; wins over the guess")
    p.add_argument("--map", type=Path, metavar="FILE",
                   help='a JSON file {"t1": PATH, "t1ce": PATH, "t2": PATH, "flair": PATH} (paths relative to it)')
    p.add_argument("--case-id", help="the case id in the output file names (default: OUT's folder name)")
    p.add_argument("--n4", action="store_true", help="correct each series' bias field with N4 first (slower)")
    p.add_argument("--brain", choices=strip.BACKENDS, default=strip.ATLAS,
                   help="brain extraction: atlas (default: the template's mask refined by intensity; needs nothing), "
                        "hd-bet (HD-BET 2.x with its weights installed; CPU, no test-time augmentation) or synthstrip "
                        "(FreeSurfer's mri_synthstrip on PATH); spikeseg never downloads a tool or its weights")
    add_threads_argument(p, "registration threads")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if an earlier prepare made it")
    p.set_defaults(handler=_prepare)
