"""Every code block of the README and the Sphinx pages runs as written.

The convention (what runs, how, and the rare explicit opt-out) is in
``tests/doc_blocks.py``. Each page's Python blocks run in one subprocess, so that
the 8 simulated devices a mesh block needs are set before JAX is imported and a
block cannot lean on the test process's state.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tomllib

import doc_blocks
import pytest

ROOT = doc_blocks.ROOT
PAGES = doc_blocks.pages()
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]
MESH_FLAGS = (
    "--xla_force_host_platform_device_count=8",
    # Simulated devices share the host's threads; on a loaded 2-core machine a
    # collective can wait longer than XLA's default before aborting.
    "--xla_cpu_collective_call_terminate_timeout_seconds=600",
    "--xla_cpu_collective_timeout_seconds=600",
)


def _blocks(page: pathlib.Path) -> list[doc_blocks.Block]:
    blocks, errors = doc_blocks.extract(page)
    assert not errors, "\n".join(errors)
    return blocks


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_python_blocks_run(page: pathlib.Path, tmp_path: pathlib.Path) -> None:
    blocks = [b for b in _blocks(page) if b.kind == "python" and b.not_runnable is None]
    if not blocks:
        pytest.skip("no Python block on this page")
    env = dict(os.environ)
    env["MPLBACKEND"] = "Agg"
    env["JAX_PLATFORMS"] = "cpu"
    if doc_blocks.needs_mesh(blocks):
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + " ".join(MESH_FLAGS)).strip()
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "doc_blocks.py"), str(page)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # blocks that write files write them here
        timeout=600,
    )
    reports = [
        json.loads(line.removeprefix("DOC-BLOCK "))
        for line in result.stdout.splitlines()
        if line.startswith("DOC-BLOCK ")
    ]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    failures = [f"--- {r['where']}\n{r['error']}" for r in reports if r["error"]]
    assert not failures, "\n".join(failures)
    assert [r["where"] for r in reports] == [b.where for b in blocks]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_blocks_have_known_languages(page: pathlib.Path) -> None:
    unknown = [f"{b.where}: {b.language!r}" for b in _blocks(page) if b.kind == "unknown"]
    assert not unknown, "unknown code-block language (python, bash or text): " + ", ".join(unknown)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_code_lines_fit_without_scrolling(page: pathlib.Path) -> None:
    # 88 columns fit the docs theme's code width at 1400 px (and GitHub's README).
    long = [
        f"{b.where} (+{i}): {len(line)} columns"
        for b in _blocks(page)
        for i, line in enumerate(b.source.splitlines())
        if len(line) > doc_blocks.MAX_COLUMNS
    ]
    assert not long, long


def test_not_runnable_marker_is_rare_and_explained() -> None:
    marked = [b for p in PAGES for b in _blocks(p) if b.not_runnable is not None]
    assert len(marked) <= doc_blocks.MAX_NOT_RUNNABLE, [b.where for b in marked]
    for page in PAGES:
        per_page = [b.where for b in _blocks(page) if b.not_runnable is not None]
        assert len(per_page) <= 1, per_page
    for block in marked:
        assert block.kind == "python", f"{block.where}: only Python blocks are run"
        assert len(block.not_runnable.split()) >= 2, f"{block.where}: give the reason"


def test_marker_is_recognised_only_directly_above_a_block(tmp_path: pathlib.Path) -> None:
    page = tmp_path / "page.rst"
    page.write_text(
        "Title\n=====\n\n.. not-runnable: needs a GPU with 80 GB\n\n"
        ".. code-block:: python\n\n   import nothing_here\n\ntext::\n\n   x = f(1)\n\n"
        "a table::\n\n   embed (V, d)   head (d, V)\n\n"
        ".. code-block:: python\n   :caption: x\n\n   a = 1\n   b = 2\n\nafter\n"
    )
    blocks, errors = doc_blocks._rst_blocks(page, page.read_text().splitlines())
    assert [(b.line, b.kind, b.not_runnable, b.source) for b in blocks] == [
        (8, "python", "needs a GPU with 80 GB", "import nothing_here\n"),
        (12, "data", None, "x = f(1)\n"),
        (16, "data", None, "embed (V, d)   head (d, V)\n"),
        (21, "python", None, "a = 1\nb = 2\n"),
    ]
    # Python in a bare literal block must say whether it runs; a table need not.
    assert len(errors) == 1 and "page.rst:12: a bare literal block" in errors[0]


def _shell_commands(page: pathlib.Path) -> list[tuple[str, str]]:
    commands = []
    for block in _blocks(page):
        if block.kind != "shell":
            continue
        for line in block.source.splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if line and not line.startswith("#"):
                commands.append((block.where, line))
    return commands


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_shell_blocks_name_existing_files_and_extras(page: pathlib.Path) -> None:
    extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    for where, command in _shell_commands(page):
        for part in re.split(r"&&|\|\||;", command):
            words = shlex.split(part)
            for word in words:
                if m := re.fullmatch(r"\.\[([\w,-]+)\]", word):
                    assert set(m.group(1).split(",")) <= extras, f"{where}: {word}"
                elif re.fullmatch(r"[\w./-]+\.(py|sh)|tests(/[\w./-]*)?|\.ci/\w+", word):
                    assert (ROOT / word).exists(), f"{where}: {word} does not exist"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = [c for _, c in _shell_commands(ROOT / "README.md") if "pytest" in c]
    assert len(readme) == 1, readme
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if "pytest" in line and not line.lstrip().startswith("#")
    ]
    assert ci == readme
