"""Each record on disk has one owner, the only code that names its files and reads its keys
(docs/architecture.md, "Contracts"): a walk over the package's code fails when another module
spells a contract's file name or reads a run's config or a bundle's manifest raw."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO

STAGES = ("runtime", "training", "export", "benchmarks", "prepare", "snn", "spikeseg")
#: a contract's file name (or a case output's suffix) -> the modules that may spell it
OWNERS = {
    "config.json": {"training/run_folder.py"}, "splits.json": {"training/run_folder.py"},
    "summary.json": {"training/run_folder.py"}, "metrics.csv": {"training/run_folder.py"},
    "activity.csv": {"training/run_folder.py"}, "best.pt": {"training/run_folder.py"},
    "last.pt": {"training/run_folder.py"},
    # a run's preprocessing record, and the shared cache's record of the same type beside its cases
    "preprocess.json": {"training/run_folder.py", "training/data.py"},
    "manifest.json": {"runtime/manifest.py"}, "prepare.json": {"runtime/prepared.py"},
    "_pred.nii.gz": {"runtime/cohort.py"}, "_uncertainty.nii.gz": {"runtime/cohort.py"},
    "_prob.nii.gz": {"runtime/cohort.py"}, "_report.json": {"runtime/cohort.py"},
    "_quicklook.png": {"runtime/cohort.py"},
}
#: names that are another record's, spelled by their own owner (not a run's or a case's)
OTHER_RECORDS = {("benchmarks/gpu_check.py", "summary.json")}


def _code_files() -> list[Path]:
    return sorted(p for stage in STAGES for p in (REPO / stage).rglob("*.py"))


def _path_strings(tree: ast.AST) -> list[str]:
    """String constants that could be a path (no whitespace), docstrings left out."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings and n.value and not re.search(r"\s", n.value)]


def test_only_a_contracts_owner_spells_its_file_names() -> None:
    offending = []
    for path in _code_files():
        rel = path.relative_to(REPO).as_posix()
        for text in _path_strings(ast.parse(path.read_text())):
            for name, owners in OWNERS.items():
                spelled = text.endswith(name) if name.startswith("_") else (text == name or text.endswith("/" + name))
                if spelled and rel not in owners and (rel, name) not in OTHER_RECORDS:
                    offending.append(f"{rel}: {text!r} (owned by {', '.join(sorted(owners))})")
    assert offending == []


def test_no_raw_reads_of_a_runs_config_or_a_bundles_manifest() -> None:
    """A run's config is read as a typed ``RunRecord`` (``RunFolder.record()``), a manifest as a
    ``Manifest``; ``.config()`` no longer exists and ``manifest[...]`` appears only in its owner."""
    raw = re.compile(r"\.config\(\)|\bmanifest\[|\bmanifest\.get\(")
    offending = [f"{p.relative_to(REPO)}:{i}: {line.strip()}"
                 for p in _code_files() if p.relative_to(REPO).as_posix() != "runtime/manifest.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if raw.search(line)]
    assert offending == []


def test_the_walk_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The checks above can fail: a module that spells a run's file, a case output's suffix in an
    f-string, or reads a manifest raw is caught."""
    tree = ast.parse('"""config.json in a docstring is prose."""\n'
                     'a = run / "config.json"\nb = f"{case}_report.json"\nc = "see the config.json file"\n')
    assert _path_strings(tree) == ["config.json", "_report.json"]
    assert re.search(r"\bmanifest\[", 'views = manifest["views"]')
