"""The documentation stays true to the repository: README.md and docs/*.md name only files (and test
functions) that exist, link only to pages and headings that exist, the README stays a short front door, and
docs/reference.md is exactly what docs/gen_reference.py writes from the code's own help."""

from __future__ import annotations

import ast
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest
from conftest import REPO

DOCS = REPO / "docs"
README_MAX_LINES = 180
# Backticked paths are read from the repository root; only these roots count as "a repository file" (an
# artifact path such as `quality/analysis.json` or `OUTPUT_DIR/adapter` is not one).
REPO_DIRS = {"bench", "docs", "notify", "scoring", "tests", "tracking", ".ci"}
REPO_FILES = {"README.md", "MLproject", "pyproject.toml", "conda.yaml"}
FORBIDDEN = ("diagnostics" + ".md", "../shared")  # split so that this line cites no file itself

FENCE = re.compile(r"^(```|~~~)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
PATH_TOKEN = re.compile(r"^(?:[\w.*-]+/)*[\w.*-]+/?(?:::[\w\[\].-]+)*$")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def doc_ids() -> list[str]:
    return [str(p.relative_to(REPO)) for p in doc_files()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: text only, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


@cache
def python_names(path: Path) -> frozenset[str]:
    """Every function and class defined anywhere in a Python file (tests, their classes and methods)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return frozenset(node.name for node in ast.walk(tree) if isinstance(node, kinds))


def links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every Markdown link and image outside code, external ones left out."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = INLINE_CODE.sub("", line)
        targets = [m.group(1) for m in LINK.finditer(line)]
        reference = REFERENCE_LINK.match(line)
        if reference:
            targets.append(reference.group(1))
        out += [(number, t) for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]
    return out


def link_problem(source: Path, target: str) -> str | None:
    file_part, _, anchor = target.partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    if not resolved.exists():
        return f"links to {target}, which does not exist"
    if anchor and resolved.suffix == ".md" and anchor.lower() not in anchors(resolved):
        return f"links to {target}, but {resolved.name} has no heading with the anchor #{anchor}"
    return None


def repo_paths(path: Path) -> list[tuple[int, str]]:
    """(line, token) for every backticked token that names a repository file, directory or test.

    `test_x.py::name` means tests/test_x.py; a lone `::name` continues the last test file on its line."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        last_file = None
        for code in INLINE_CODE.findall(line):
            for token in code.split():
                token = token.strip(",;()\"'")
                if "://" in token or not token:
                    continue
                if token.startswith("::") and last_file:
                    out.append((number, last_file + token))
                    continue
                if not PATH_TOKEN.match(token):
                    continue
                file_part = token.split("::")[0]
                if re.fullmatch(r"test_\w+\.py", file_part):
                    token, file_part = f"tests/{token}", f"tests/{file_part}"
                first = file_part.split("/")[0]
                if (first in REPO_DIRS and "/" in file_part) or file_part in REPO_FILES:
                    out.append((number, token))
                    if file_part.endswith(".py"):
                        last_file = file_part
    return out


def path_problem(token: str) -> str | None:
    file_part, *names = token.split("::")
    if any(ch in file_part for ch in "*?["):
        return None if list(REPO.glob(file_part)) else f"names {token}, which matches no file"
    target = REPO / file_part
    if not target.exists() or (file_part.endswith("/") and not target.is_dir()):
        return f"names {token}, which does not exist"
    missing = [n for n in (re.sub(r"\[.*\]$", "", n) for n in names) if n not in python_names(target)]
    if missing:
        return f"names {token}, but {file_part} defines no {', '.join(missing)}"
    return None


@pytest.mark.parametrize("path", doc_files(), ids=doc_ids())
def test_every_relative_link_points_to_a_file_and_heading_that_exist(path):
    problems = [f"{path.relative_to(REPO)}:{line}: {problem}" for line, target in links(path)
                if (problem := link_problem(path, target))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", doc_files(), ids=doc_ids())
def test_every_repository_path_and_test_named_exists(path):
    problems = [f"{path.relative_to(REPO)}:{line}: {problem}" for line, token in repo_paths(path)
                if (problem := path_problem(token))]
    assert not problems, "\n".join(problems)


def test_the_checkers_catch_what_they_are_for(tmp_path):
    """A missing page, heading, file or test function is reported; artifact paths and URLs are not."""
    page = tmp_path / "page.md"
    missing = "missing"  # page names built at run time: this file itself cites no page that does not exist
    page.write_text(
        "# Title\n\nSee [here](#title), [gone](nowhere.md), [bad anchor](#nothing), [web](https://x.org/a.md).\n"
        "`tests/test_docs.py::test_no_such_test`, `test_docs.py::test_readme_is_a_short_front_door`, "
        f"`::test_nope`, `docs/{missing}.md`, `quality/analysis.json`, `OUTPUT_DIR/adapter`, `tests/test_*.py`\n"
        f"```\n[in code]({missing}.md) `docs/also-{missing}.md`\n```\n", encoding="utf-8")
    broken_links = [t for _, t in links(page) if link_problem(page, t)]
    assert broken_links == ["nowhere.md", "#nothing"]
    broken_paths = [t for _, t in repo_paths(page) if path_problem(t)]
    assert broken_paths == ["tests/test_docs.py::test_no_such_test", "tests/test_docs.py::test_nope",
                            f"docs/{missing}.md"]


def test_readme_is_a_short_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines, at most {README_MAX_LINES}: move detail to a page under docs/")


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO / "README.md"
    linked = {(readme.parent / t.partition("#")[0]).resolve() for _, t in links(readme)}
    orphans = [str(p.relative_to(REPO)) for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages no README link reaches: {orphans}"


def test_no_page_mentions_removed_or_outside_files():
    texts = [REPO / "README.md", *sorted(p for p in DOCS.rglob("*") if p.suffix in (".md", ".py"))]
    hits = [f"{p.relative_to(REPO)}:{n}: {word}" for p in texts
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            for word in FORBIDDEN if word in line]
    assert not hits, "\n".join(hits)


def test_reference_is_generated_from_the_code():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    current = (DOCS / "reference.md").read_text(encoding="utf-8")
    assert current == expected, (
        "docs/reference.md differs from the code's help (tracking/cli.py, MLproject): "
        "run `python docs/gen_reference.py`")
