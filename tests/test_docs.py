"""The documentation: the site builds with warnings as errors (as `make docs` does), a
broken reference fails that build, the API reference shows in a real browser, and the
README is one screen whose example runs."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
# As the Makefile's docs target: fresh environment, warnings are errors, all of them
# reported, every cross-reference resolved.
SPHINX = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-n", "-q"]

pytest.importorskip("sphinx", reason="the docs extra is not installed (scripts/venv.sh "
                                     "installs it for make test)")


def build(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPHINX, str(source), str(out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    p = build(DOCS, out)
    assert p.returncode == 0, f"the site does not build:\n{p.stderr}"
    assert p.stderr == "", p.stderr
    return out


def test_the_site_builds_every_page(site: Path) -> None:
    pages = {p.relative_to(DOCS).with_suffix(".html").as_posix()
             for p in DOCS.rglob("*.md")}
    built = {p.relative_to(site).as_posix() for p in site.rglob("*.html")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"
    for page in ("reference/api.html", "reference/cli.html", "ARCHITECTURE.html",
                 "FORMAT.html", "HANDLER.html", "EXTENDING.html", "CHECKPOINTS.html",
                 "COMMANDS.html", "INSTALL.html", "getting-started.html"):
        assert page in built


def _text(page: str) -> str:
    """What a reader sees of an HTML page: its text, without tags, scripts or styles."""
    class Text(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.parts: list[str] = []
            self.hidden = 0

        def handle_starttag(self, tag: str, attrs: object) -> None:
            self.hidden += tag in ("script", "style")

        def handle_endtag(self, tag: str) -> None:
            self.hidden -= tag in ("script", "style")

        def handle_data(self, data: str) -> None:
            if not self.hidden:
                self.parts.append(data)

    t = Text()
    t.feed(page)
    return re.sub(r"\s+", " ", html.unescape("".join(t.parts)))


def test_the_api_reference_has_the_stub_signatures(site: Path) -> None:
    """The extension's functions show the .pyi's types, not Cython's bare names."""
    text = _text((site / "reference" / "api.html").read_text(encoding="utf-8"))
    assert ("mcsafe.copy(dst: Buffer, src: Buffer, n: SupportsIndex | None = None, *, "
            "dst_offset: SupportsIndex = 0, src_offset: SupportsIndex = 0) → int") in text
    assert "readinto(buf: Buffer, offset: SupportsIndex = 0) → int" in text
    assert "scrub(" in text and "progress" in text


def test_the_cli_reference_comes_from_the_parsers(site: Path) -> None:
    """Every subcommand and option of both commands' parsers is on the reference page."""
    import argparse

    from extable.arguments import parser as extable_parser
    from mcsafe.cli import parser

    text = _text((site / "reference" / "cli.html").read_text(encoding="utf-8"))
    for top in (extable_parser(), parser()):
        (subs,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
        for name, sub in subs.choices.items():
            assert name in text
            for opt in (o for a in sub._actions for o in a.option_strings):
                assert opt in text, f"{top.prog} {name} {opt} is not in the reference"


def test_a_broken_reference_fails_the_build(tmp_path: Path) -> None:
    """What make test's build catches, with the site's own configuration: of two
    references, the one to a function that does not exist fails the build."""
    source = tmp_path / "docs"
    source.mkdir()
    shutil.copy(DOCS / "conf.py", source)
    shutil.copytree(DOCS / "_ext", source / "_ext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (source / "index.md").write_text(textwrap.dedent("""\
        # A page

        ```{eval-rst}
        .. autofunction:: mcsafe.copy
        ```

        {py:func}`mcsafe.copy` exists; {py:func}`mcsafe.no_such_function` does not.
        """))
    p = build(source, tmp_path / "out")
    assert p.returncode != 0
    warnings = [line for line in p.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, p.stderr
    assert "reference target not found: mcsafe.no_such_function" in warnings[0]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    pytest.skip("no chromium on PATH (scripts/setup.sh installs Debian's chromium)")


def _headless(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: Chromium's sandbox refuses to run as root, which the tests are here.
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_api_reference_in_a_browser(site: Path, tmp_path: Path) -> None:
    """Headless Chromium opens the built API reference: the DOM it rendered (after the
    theme's scripts ran) shows MappedFile.readinto, and a screenshot is taken (in a
    temporary folder, never in the repository)."""
    browser = _chromium()
    probe = _headless(browser, tmp_path / "probe", "--dump-dom", "about:blank")
    if probe.returncode != 0 or "<html" not in probe.stdout:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"{browser} cannot start here (exit {probe.returncode}): {last}")
    url = (site / "reference" / "api.html").as_uri()

    dom = _headless(browser, tmp_path / "profile", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    text = _text(dom.stdout)
    assert "MappedFile.readinto" in text
    assert "readinto(buf: Buffer, offset: SupportsIndex = 0) → int" in text

    shot = tmp_path / "api.png"
    p = _headless(browser, tmp_path / "profile", f"--screenshot={shot}",
                  "--window-size=1280,1600", url + "#mcsafe.MappedFile.readinto")
    assert p.returncode == 0, p.stderr
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 1600)
    assert not shot.resolve().is_relative_to(ROOT)


def _readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_is_one_screen() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 50, f"README.md has {len(lines)} lines"
    quick = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"^```\n(.*?)^```", quick, re.S | re.M)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    (example,) = _readme_blocks("python")
    code = [line for line in example.splitlines() if line.strip()]
    assert len(code) <= 10, f"the README's example has {len(code)} lines"
    for link in re.findall(r"\]\(([^)#]+)\)", README.read_text()):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_the_readme_example_runs(tmp_path: Path) -> None:
    """The example, run as a user would (warnings as errors), prints what its comments
    say it prints."""
    (example,) = _readme_blocks("python")
    promised = [int(n) for n in re.findall(r"# (\d+)[,:]", example)]
    script = tmp_path / "example.py"
    script.write_text(example)
    p = subprocess.run([sys.executable, "-W", "error", str(script)], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert [int(line) for line in p.stdout.split()] == promised == [8192, 5000]


def test_the_getting_started_examples_run(tmp_path: Path) -> None:
    """The getting-started page's runnable example (the one that makes its own fault)."""
    page = (DOCS / "getting-started.md").read_text()
    blocks = [b for b in re.findall(r"^```python\n(.*?)^```", page, re.S | re.M)
              if "inject.region" in b]
    assert len(blocks) == 1
    p = subprocess.run([sys.executable, "-W", "error", "-c", textwrap.dedent(blocks[0])],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "8192\n"
