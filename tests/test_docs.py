"""The README and docs/: the README's size and set-up commands, and every relative link resolving in the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 12 * 1024  # bytes: the README is a landing page; the studies live in docs/results.md
# The Markdown files whose relative links must resolve: the README, docs/ and the benchmark records.
LINKED = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "experiments" / "results" / "bench" / "README.md"]

# [text](target) and ![alt](target), an optional "title" after the target; <img src="target">.
MD_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)


def split_code(text: str) -> tuple[str, list[list[str]]]:
    """The Markdown outside code (inline code spans dropped: links there are not links), and the non-blank
    lines of each code block, fenced or indented by four spaces, in order."""
    prose, blocks, current, fenced, previous_blank = [], [], None, False, True
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            if fenced:
                current = []
            else:
                blocks.append(current)
                current = None
        elif fenced:
            current.append(line.strip())
        elif line.startswith("    ") and line.strip() and (previous_blank or current is not None):
            current = [] if current is None else current
            current.append(line.strip())
        else:
            if line.strip() and current is not None:
                blocks.append(current)
                current = None
            prose.append(re.sub(r"`[^`]*`", "", line))
        previous_blank = not line.strip()
    if current is not None:
        blocks.append(current)
    return "\n".join(prose), [[line for line in block if line] for block in blocks if any(block)]


def without_code(text: str) -> str:
    return split_code(text)[0]


def links(path: Path) -> list[str]:
    text = without_code(path.read_text(encoding="utf-8"))
    return MD_LINK.findall(text) + HTML_SRC.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_code(path.read_text(encoding="utf-8")), re.MULTILINE)
    return {slug(h) for h in headings}


def test_the_readme_is_a_landing_page_of_at_most_12_kb():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move details to docs/"


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_in_the_repository(doc: Path):
    assert doc.is_file(), f"{doc.relative_to(ROOT)} is missing"
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or target.startswith("#"):
            continue  # http(s), mailto: not checked here; a pure #anchor: see the anchor test
        path = target.split("#", 1)[0].split("?", 1)[0]
        resolved = (doc.parent / path).resolve()
        if not resolved.exists() or ROOT not in (resolved, *resolved.parents):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to what is not in the repository: {broken}"


@pytest.mark.parametrize("doc", LINKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_anchor_in_a_link_names_a_heading(doc: Path):
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) or "#" not in target:
            continue
        path, anchor = target.split("#", 1)
        file = (doc.parent / path).resolve() if path else doc
        if file.suffix == ".md" and file.is_file() and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to headings that do not exist: {broken}"


def test_the_readme_links_its_documents():
    targets = {t.split("#", 1)[0] for t in links(README)}
    for doc in ("docs/design.md", "docs/results.md", "docs/pictures.md", "experiments/results/bench/README.md"):
        assert doc in targets, f"README.md does not link {doc}"


def test_the_readme_starts_with_two_set_up_commands_the_ci_runs_too():
    """The first code block: one command installs and runs the default training, one installs and runs the tests."""
    first = split_code(README.read_text(encoding="utf-8"))[1][0]
    assert len(first) == 2, f"the README's first code block should hold exactly two commands, not {first}"
    train, test = first
    assert "pip install" in train and "python -m glimpse.train" in train, train
    assert 'pip install -e ".[test]"' in test and test.rstrip().endswith("python -m pytest"), test
    ci = ROOT / ".ci" / "run"
    if ci.is_file():  # CI installs the README's way and runs the README's test command
        script = ci.read_text(encoding="utf-8")
        assert 'pip install --quiet -e ".[test]"' in script or 'pip install -e ".[test]"' in script
        assert re.search(r"^python -m pytest\s*$", script, re.MULTILINE)


def test_the_readme_names_no_commit():
    """What holds for a user, not how it came about: no commit hashes (the benchmark records keep those)."""
    text = without_code(README.read_text(encoding="utf-8"))
    hashes = [w for w in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", w) and re.search(r"\d", w)]
    assert not hashes, f"README.md names commits: {hashes}"


def repository_files(*suffixes: str) -> list[Path]:
    """Tracked and untracked-but-not-ignored files (git), else every file outside the usual build and venv folders."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "venv", "build", "dist", "outputs", "multirun", "__pycache__"}
        files = [p for p in ROOT.rglob("*") if not skip & set(p.relative_to(ROOT).parts)]
    return [p for p in files if p.suffix in suffixes and p.is_file()]


def stale_design_references() -> list[str]:
    """Every mention of the old design document, DESIGN.md (now docs/design.md, lower case), as path:line: token."""
    found = []
    for path in repository_files(".py", ".yaml", ".yml", ".md", ".toml"):
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{n}: {m.group(0)}" for m in re.finditer(r"[\w./-]*DESIGN\.md", line)]
    return found


# Until every file cites docs/design.md (glimpse/train.py, glimpse/compare.py still name DESIGN.md): then drop the mark.
def test_every_design_document_reference_points_at_docs_design_md():
    assert (ROOT / "docs" / "design.md").is_file()
    stale = stale_design_references()
    assert not stale, "references to a design document other than docs/design.md:\n" + "\n".join(stale)
