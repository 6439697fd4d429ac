"""Code blocks of the README and the Sphinx pages, and a runner that executes them.

Convention for every code block a reader sees (``README.md``, ``docs/index.rst``,
``docs/guides/*.rst``; new guides are picked up by the glob):

* A **Python** block (Markdown ```` ```python ````; reST ``.. code-block:: python``,
  ``.. code::``, ``.. sourcecode::``) is a complete program: pasted into a fresh
  interpreter it runs as written. It imports what it uses and builds the small
  parameters/gradients it needs itself; it does not continue an earlier block. A block
  whose lines start with ``>>>`` is a doctest and its printed output is compared.
* A page's Python blocks run one after another in **one** subprocess (JAX is imported
  once), each in a fresh namespace. A page any of whose blocks builds a mesh
  (``make_mesh``, ``Mesh(``, ``pmap``, ``device_count``) runs with 8 simulated CPU
  devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``), so a mesh block
  should work for any device count it is given, as a user's would.
* A **shell** block (``bash``, ``sh``, ``shell``, ``console``) is not executed; every
  script, test path and ``.[extra]`` it names must exist.
* **Data** blocks (``text``, ``none``, ``toml``, ``json``, ``yaml``, ``ini``) are shown,
  not run. A bare reST literal block (``::``) is data too, unless it parses as
  Python: then it is refused (say ``python`` to run it or ``text`` not to).
* Code lines are at most :data:`MAX_COLUMNS` (88) characters, so that no block
  scrolls sideways on the site or on GitHub.
* **Opt-out**, for a Python block that cannot run as written (rare; prefer making it
  self-contained): put ``.. not-runnable: <reason>`` (reST comment) or
  ``<!-- not-runnable: <reason> -->`` (Markdown) on the line(s) directly above it.
  At most one per page and :data:`MAX_NOT_RUNNABLE` in all (tested).

Run one page by hand: ``python3 tests/doc_blocks.py docs/guides/galore.rst``.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import json
import pathlib
import re
import sys
import time
import traceback
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_NOT_RUNNABLE = 3
MAX_COLUMNS = 88  # longest code line; longer ones scroll sideways on the docs site

PYTHON = frozenset({"python", "python3", "py", "pycon", "ipython", ""})
SHELL = frozenset({"bash", "sh", "shell", "console", "shell-session", "zsh"})
DATA = frozenset({"text", "none", "toml", "json", "yaml", "ini", "output"})
MESH_PATTERN = re.compile(r"make_mesh|\bMesh\(|\bpmap\b|device_count|AbstractMesh")

_RST_CODE = re.compile(r"^(\s*)\.\.\s+(code-block|code|sourcecode)::\s*(\S*)\s*$")
_RST_MARKER = re.compile(r"^\s*\.\.\s+not-runnable:(.*)$")
_MD_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
_MD_MARKER = re.compile(r"^\s*<!--\s*not-runnable:(.*?)-->\s*$")
_RST_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w:-]+::")


@dataclasses.dataclass(frozen=True)
class Block:
    """One code block: where it starts, its language and its dedented source."""

    page: pathlib.Path
    line: int  # 1-based line of the block's first source line
    language: str
    source: str
    not_runnable: str | None = None  # the reason given by an opt-out marker

    @property
    def kind(self) -> str:
        if self.language in PYTHON:
            return "python"
        if self.language in SHELL:
            return "shell"
        if self.language in DATA:
            return "data"
        return "unknown"

    @property
    def where(self) -> str:
        return f"{display(self.page)}:{self.line}"


def display(page: pathlib.Path) -> str:
    """The page's path relative to the repository root when it is inside it."""
    try:
        return str(page.relative_to(ROOT))
    except ValueError:
        return str(page)


def pages() -> list[pathlib.Path]:
    """Every page whose code blocks a reader sees (new guides included)."""
    docs = ROOT / "docs"
    found = [ROOT / "README.md", docs / "index.rst"]
    found += sorted((docs / "guides").glob("*.rst"))
    found += sorted((docs / "guides").glob("*.md"))
    return [p for p in found if p.exists()]


def _marker_above(lines: list[str], index: int, pattern: re.Pattern[str]) -> str | None:
    """The reason of an opt-out marker on the nearest non-blank line above ``index``."""
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j >= 0 and (m := pattern.match(lines[j])):
        return m.group(1).strip().rstrip("-").strip()
    return None


def _dedent(body: list[str]) -> str:
    while body and not body[-1].strip():
        body.pop()
    width = min((len(x) - len(x.lstrip()) for x in body if x.strip()), default=0)
    return "\n".join(x[width:] for x in body) + "\n"


def _is_python(source: str) -> bool:
    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


def _rst_blocks(page: pathlib.Path, lines: list[str]) -> tuple[list[Block], list[str]]:
    blocks, errors = [], []
    i = 0
    while i < len(lines):
        m = _RST_CODE.match(lines[i])
        if m is None:
            text = lines[i].rstrip()
            indent = len(text) - len(text.lstrip())
            if (
                text.endswith("::")
                and not _RST_DIRECTIVE.match(text)
                and i + 2 < len(lines)
                and not lines[i + 1].strip()
                and len(lines[i + 2]) - len(lines[i + 2].lstrip()) > indent
            ):
                j = i + 2
                while j < len(lines) and (
                    not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
                ):
                    j += 1
                body = _dedent(lines[i + 2 : j])
                if _is_python(body):
                    errors.append(
                        f"{display(page)}:{i + 3}: a bare literal block '::' holding Python; "
                        "use '.. code-block:: python' (run by the suite) or "
                        "'.. code-block:: text'"
                    )
                blocks.append(Block(page, i + 3, "text", body))
                i = j
                continue
            i += 1
            continue
        indent = len(m.group(1))
        marker = _marker_above(lines, i, _RST_MARKER)
        j = i + 1
        # Directive options (":linenos:", ":caption: ...") come first.
        while j < len(lines) and re.match(r"^\s+:[\w-]+:", lines[j]):
            j += 1
        body_start = j
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            j += 1
        body = lines[body_start:j]
        first = next((k for k, x in enumerate(body) if x.strip()), 0)
        blocks.append(
            Block(page, body_start + first + 1, m.group(3), _dedent(body[first:]), marker)
        )
        i = j
    return blocks, errors


def _md_blocks(page: pathlib.Path, lines: list[str]) -> tuple[list[Block], list[str]]:
    blocks, errors = [], []
    i = 0
    while i < len(lines):
        m = _MD_FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence = m.group(2)
        marker = _marker_above(lines, i, _MD_MARKER)
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        if j == len(lines):
            errors.append(f"{display(page)}:{i + 1}: unclosed code fence")
        blocks.append(Block(page, i + 2, m.group(3).lower(), _dedent(lines[i + 1 : j]), marker))
        i = j + 1
    return blocks, errors


def extract(page: pathlib.Path) -> tuple[list[Block], list[str]]:
    """The page's code blocks and the convention errors found while reading them."""
    lines = page.read_text(encoding="utf-8").splitlines()
    if page.suffix == ".md":
        return _md_blocks(page, lines)
    return _rst_blocks(page, lines)


def needs_mesh(blocks: list[Block]) -> bool:
    return any(b.kind == "python" and MESH_PATTERN.search(b.source) for b in blocks)


def _run_block(block: Block) -> None:
    # Leading newlines make tracebacks name the page and the line of the page itself.
    padded = "\n" * (block.line - 1) + block.source
    filename = str(block.page)
    if block.source.lstrip().startswith(">>>"):
        test = doctest.DocTestParser().get_doctest(
            block.source, {"__name__": "__main__"}, block.where, filename, block.line - 1
        )
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        out: list[str] = []
        result = runner.run(test, out=out.append)
        if result.failed:
            raise AssertionError("".join(out))
        return
    # As a script: the block's namespace is the module ``__main__`` (dataclasses,
    # pickle and typing look their module up in sys.modules).
    module = types.ModuleType("__main__")
    module.__file__ = filename
    main = sys.modules["__main__"]
    sys.modules["__main__"] = module
    try:
        exec(compile(padded, filename, "exec"), module.__dict__)
    finally:
        sys.modules["__main__"] = main


def run_page(page: pathlib.Path) -> list[dict[str, object]]:
    """Runs the page's Python blocks in this process; one result per block."""
    blocks, _ = extract(page)
    results = []
    for block in blocks:
        if block.kind != "python" or block.not_runnable is not None:
            continue
        start = time.perf_counter()
        try:
            _run_block(block)
            error = None
        except BaseException as exc:  # noqa: BLE001 - reported to the parent test
            # Frames from the block on: drop run_page's and _run_block's.
            tb = exc.__traceback__.tb_next.tb_next if exc.__traceback__.tb_next else None
            error = "".join(traceback.format_exception(type(exc), exc, tb))
        results.append(
            {"where": block.where, "seconds": time.perf_counter() - start, "error": error}
        )
    return results


if __name__ == "__main__":
    # The directory of this file is on sys.path; blocks must not see the test helpers.
    sys.path[:] = [p for p in sys.path if pathlib.Path(p or ".").resolve() != ROOT / "tests"]
    for result in run_page(pathlib.Path(sys.argv[1]).resolve()):
        print("DOC-BLOCK " + json.dumps(result), flush=True)
