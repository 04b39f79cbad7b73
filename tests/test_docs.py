"""The documentation, checked against the repository: README.md stays a short front door that opens
with the main job and the test command (the ones CI runs), and every page (README.md, docs/*.md)
links only to files and headings that exist and names only modules, flags, archs and recipes that
exist."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from src.models.registry import list_archs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAIN_JOB = "pip install -r requirements.txt && python -m src.pipeline recipes/demo"
TESTS = "pip install -r requirements.txt && python -m pytest -q"
LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND = re.compile(r"python -m (src(?:\.\w+)+)([^`\n]*)")
SRC_TEXT = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)}


def test_readme_is_a_short_front_door():
    text = README.read_text()
    assert len(text.encode()) < 10_000
    lines = text.splitlines()
    assert lines[0] == "# GI-tract segmentation pipeline"
    assert f"    {MAIN_JOB}" in lines[:12] and f"    {TESTS}" in lines[:12]
    assert TESTS in (ROOT / ".ci" / "run").read_text()
    linked = set(LINK.findall(text))
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in linked, f"README does not link {page.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_resolve(page):
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_file(), f"{page.name}: broken link {target}"
        assert dest.is_relative_to(ROOT), f"{page.name}: link out of the repository {target}"
        if anchor:
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_name_what_exists(page):
    text = page.read_text()
    archs = {spec.name for spec in list_archs()}
    for module, rest in COMMAND.findall(text):
        assert importlib.util.find_spec(module), f"{page.name}: no module {module}"
        for flag in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", rest):
            name = flag.removeprefix("no-")
            assert f"--{flag}" in SRC_TEXT or name.replace("-", "_") in SRC_TEXT, \
                f"{page.name}: {module} has no flag --{flag}"
    for arch in re.findall(r"--arch ([a-z0-9_]+)", text):
        assert arch in archs, f"{page.name}: no arch {arch}"
    for recipe in re.findall(r"\brecipes/(\w+)", text):
        assert (ROOT / "recipes" / f"{recipe}.toml").is_file() or recipe in ("mine", "NAME"), \
            f"{page.name}: no recipe {recipe}"
