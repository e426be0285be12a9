"""The documentation agrees with the code: every test it names exists, every file and module path it names
exists, and it speaks of this repository alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
TEST_REFERENCE = re.compile(r"`?(tests/[\w/]+\.py)?::(\w+)")


def referenced_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name) pairs; `::name` alone refers to the last file named before it."""
    pairs, current = [], None
    for match in TEST_REFERENCE.finditer(text):
        current = match.group(1) or current
        if current is not None:
            pairs.append((current, match.group(2)))
    return pairs


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_test_exists(doc: Path) -> None:
    missing = []
    for file, name in referenced_tests(doc.read_text()):
        path = ROOT / file
        if not path.is_file() or not re.search(rf"^\s*(async )?def {name}\(", path.read_text(), re.MULTILINE):
            missing.append(f"{file}::{name}")
    assert not missing, f"{doc.name} names tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_named_repository_file_exists(doc: Path) -> None:
    names = re.findall(r"`((?:modeling_dreamer|data|training|envs|tests|benchmarks|scripts|recipes|accelerate_configs|docs)"
                       r"/[\w/.-]+\.(?:py|yaml|md))`", doc.read_text())
    missing = sorted({name for name in names if not (ROOT / name).exists()})
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_docs_and_code_speak_of_this_repository_alone() -> None:
    """No pointer outside the repository (a design file, a sibling folder, an issue tracker), and comments say
    why rather than which review item they answer; the tests are read too (this file excepted: it names them)."""
    outside = re.compile(r"DESIGN\.md|\.\./shared|hf_stack_notes|the issue\b|issue #\d+")
    review_item = re.compile(r"review items? \d+")  # code says why; docs/code_review.md maps the findings
    folders = ("modeling_dreamer", "data", "training", "envs", "scripts", "benchmarks", "tests")
    code = sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if p.name != "test_docs.py")
    code.append(ROOT / "train.py")
    found = [f"{p.relative_to(ROOT)}:{n}" for p in DOCS + code for n, line in enumerate(p.read_text().splitlines(), 1)
             if outside.search(line) or (p in code and review_item.search(line))]
    assert not found, f"references outside the repository: {found}"
