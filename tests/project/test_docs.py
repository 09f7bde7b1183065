"""The README and the documentation: the README stays a short front door, and no link in it or
in docs/ points at a file or a heading that does not exist (``make docs`` builds the site with
``mkdocs build --strict`` too; this check needs no MkDocs)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.helpers import REPO

README_MAX_LINES = 250
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """A heading's anchor as MkDocs' toc (and GitHub) make it: lower case, punctuation dropped,
    spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"\s+", "-", text).strip("-")


def anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def pages() -> list[Path]:
    return [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").rglob("*.md"))]


def test_the_readme_is_a_short_front_door() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    assert "Not a medical device" in text and "make demo" in text and "make test" in text


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in pages():
        text = _FENCE.sub("", page.read_text())
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def readme_commands() -> list[list[str]]:
    """Every ``spikeseg ...`` command in the README's code blocks, as argument lists."""
    import shlex

    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("spikeseg "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_readme_command_is_one_the_cli_accepts() -> None:
    """The README's commands parse with today's options (the demo and the tests run what they do)."""
    from spikeseg.cli import build_parser

    commands = readme_commands()
    assert {c[0] for c in commands} >= {"segment", "train", "export", "profile", "bench", "package"}
    parser = build_parser()
    for args in commands:
        parser.parse_args(args)


def test_the_site_navigation_names_existing_pages() -> None:
    cfg = yaml.safe_load((REPO / "mkdocs.yml").read_text().replace("!!python", "#"))

    def walk(nav):
        for item in nav:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from walk(value) if isinstance(value, list) else [value]
    missing = [p for p in walk(cfg["nav"]) if not (REPO / "docs" / p).is_file()]
    assert not missing, missing
