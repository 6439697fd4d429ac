"""The documentation site builds offline with warnings treated as errors.

It must also read offline: every script, stylesheet and font it loads is a file
of the build (MathJax included), so formulas render from a ``file://`` copy.
"""

import pathlib
import re
import subprocess
import sys

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
# What a browser fetches by itself: scripts, stylesheets, images, fonts.
_LOADED = re.compile(
    r"<(?:script|img)\b[^>]*\bsrc=\"([^\"]+)\"|<link\b[^>]*\bhref=\"([^\"]+)\"", re.IGNORECASE
)


def test_docs_build_without_warnings_and_read_offline(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html"]
        + [str(DOCS), str(out)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "index.html").exists()

    pages = sorted(out.rglob("*.html"))
    remote = []
    for page in pages:
        for match in _LOADED.finditer(page.read_text(encoding="utf-8")):
            url = match.group(1) or match.group(2)
            if re.match(r"(https?:)?//", url):
                remote.append(f"{page.relative_to(out)}: {url}")
    assert not remote, remote

    # Formulas: MathJax is loaded from the build itself, and the file is there.
    galore = (out / "guides" / "galore.html").read_text(encoding="utf-8")
    scripts = re.findall(r"<script[^>]*src=\"([^\"]*mathjax[^\"]*)\"", galore)
    assert scripts, "the GaLore guide loads no MathJax"
    for src in scripts:
        assert (out / "guides" / src.split("?")[0]).resolve().is_file(), src
    for css in re.findall(r"url\(([^)]+)\)", (out / "_static" / "custom.css").read_text()):
        assert not css.strip("'\"").startswith(("http", "//")), css
