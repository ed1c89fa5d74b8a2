"""The code cites only what ships with it: every research note a tracked file names is a file of the repository, and
every ``docs/...md`` page (and ``#section``) that code, configs, tests, pipelines or SLURM scripts cite exists.

A citation of a page that does not ship leaves the reader of a comment with nothing to open; one of a page that was
renamed, or a section that was retitled, points at nothing. Both fail here with the file and line of the citation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.helpers import markdown_anchors

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve().relative_to(ROOT).as_posix()
# Research notes written while building the project; the facts the code needs from them are in docs/reference/.
NOTES = ("methods", "DESIGN", "engineering", "environment")
NOTE_MENTION = re.compile(r"[\w./-]*\b(?:" + "|".join(NOTES) + r")\.md\b")
CITING_TREES = ("avmae", "tests", "pipelines", "slurm")
DOC_CITATION = re.compile(r"\bdocs/[\w./-]+?\.md(?:#[\w-]+)?")


def _tracked() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]


def _lines(name: str) -> list[str]:
    return (ROOT / name).read_bytes().decode("utf-8", errors="replace").splitlines()


def _resolves(mention: str, citing: str, tracked: set[str]) -> bool:
    """A mention names a shipped file when it is a path from the repository root, from the citing file's folder (a
    Markdown link between pages of docs/reference/ is relative) or from docs/ (mkdocs.yml's nav names pages there)."""
    candidates = [Path(mention), Path(citing).parent / mention, Path("docs") / mention]
    return any(Path(*_normalised(candidate.parts)).as_posix() in tracked for candidate in candidates)


def _normalised(parts: tuple[str, ...]) -> list[str]:
    kept: list[str] = []
    for part in parts:
        if part == "..":
            if not kept:
                return ["..", "outside"]  # above the repository root: never a tracked file
            kept.pop()
        elif part not in (".", ""):
            kept.append(part)
    return kept or ["."]


def unshipped_note_mentions(names: list[str]) -> list[str]:
    tracked = set(names)
    found = []
    for name in names:
        if name == THIS:  # this test names the notes to look for them
            continue
        for number, line in enumerate(_lines(name), 1):
            for mention in NOTE_MENTION.findall(line):
                if not _resolves(mention, name, tracked):
                    found.append(f"{name}:{number}: cites {mention}, which is not a file of the repository")
    return found


def broken_doc_citations(names: list[str]) -> list[str]:
    found = []
    for name in names:
        if not name.startswith(tuple(tree + "/" for tree in CITING_TREES)) or name == THIS:
            continue
        for number, line in enumerate(_lines(name), 1):
            for citation in DOC_CITATION.findall(line):
                page, _, anchor = citation.partition("#")
                if not (ROOT / page).is_file():
                    found.append(f"{name}:{number}: cites {page}, which does not exist")
                elif anchor and anchor not in markdown_anchors(ROOT / page):
                    found.append(f"{name}:{number}: cites {citation}, but {page} has no heading with that anchor")
    return found


def test_no_file_cites_a_note_that_does_not_ship():
    found = unshipped_note_mentions(_tracked())
    assert not found, f"{len(found)} citations of unshipped notes (cite docs/reference/ instead):\n" + "\n".join(found)


def test_cited_doc_pages_and_sections_exist():
    found = broken_doc_citations(_tracked())
    assert not found, f"{len(found)} citations of missing docs pages or sections:\n" + "\n".join(found)


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    """Each check flags a bad citation and passes a good one (so a pass above means something)."""
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    (tmp_path / "docs" / "reference" / "libraries.md").write_text("# Notes\n\n## Shards\n", encoding="utf-8")
    (tmp_path / "avmae").mkdir()
    (tmp_path / "avmae" / "good.py").write_text(
        "# see docs/reference/libraries.md#shards\n", encoding="utf-8")
    (tmp_path / "avmae" / "bad.py").write_text(
        "# see methods.md A.1 and docs/reference/libraries.md#missing and docs/gone.md\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    names = ["docs/reference/libraries.md", "avmae/good.py", "avmae/bad.py"]
    assert unshipped_note_mentions(names) == ["avmae/bad.py:1: cites methods.md, which is not a file of the repository"]
    assert broken_doc_citations(names) == [
        "avmae/bad.py:1: cites docs/reference/libraries.md#missing, but docs/reference/libraries.md has no heading "
        "with that anchor",
        "avmae/bad.py:1: cites docs/gone.md, which does not exist"]
