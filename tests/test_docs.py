"""The documentation is checked: every command shown in README.md and docs/*.md still parses with the real argument
parser (nothing runs: parsing stops the program), every Python snippet compiles and the njet names it imports or
uses exist, and every relative link points at a file, and a heading, that exists."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import io
import re
import runpy
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
INLINE = re.compile(r"(?<!`)`([^`]+)`(?!`)")
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)
# Commands in running text count when they start like one of these (a figure's command is often written inline);
# one with no arguments or only placeholders (`python -m njet_convert.export DIR`) names a program: its --help must
# work.
INLINE_COMMANDS = ("njet-convert ", "python ", "torchrun ", "time ")
OWN_PACKAGES = ("njet_convert", "njet_layers")


@dataclass(frozen=True)
class Snippet:
    """A piece of a page: its text, where it starts and what it is (a shell command, Python code)."""

    page: Path
    line: int
    text: str
    inline: bool = False

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _line(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _fences(page: Path) -> list[tuple[str, Snippet]]:
    text = page.read_text()
    return [(m.group(1), Snippet(page, _line(text, m.start(2)), m.group(2))) for m in FENCE.finditer(text)]


def _prose(page: Path) -> str:
    """The page with its fenced blocks blanked out (line numbers kept), for inline code and links."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), page.read_text())


def _shell_lines(block: Snippet) -> list[Snippet]:
    """One snippet per command of a shell block (continued lines joined), at the line where it starts."""
    found, start, parts = [], 0, []
    for i, line in enumerate(block.text.splitlines()):
        start = start if parts else i
        parts.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            command = " ".join(parts).strip()
            parts = []
            if command and not command.startswith("#"):
                found.append(Snippet(block.page, block.line + start, command))
    return found


def _commands() -> list[Snippet]:
    found = []
    for page in PAGES:
        for lang, block in _fences(page):
            if lang in SHELL:
                found += _shell_lines(block)
        prose = _prose(page)
        found += [Snippet(page, _line(prose, m.start()), " ".join(m.group(1).split()), inline=True)
                  for m in INLINE.finditer(prose) if m.group(1).startswith(INLINE_COMMANDS)]
    return found


def _python_snippets() -> list[Snippet]:
    return [block for page in PAGES for lang, block in _fences(page) if lang in ("python", "py")]


def _links() -> list[Snippet]:
    return [Snippet(page, _line(prose, m.start()), m.group(1)) for page in PAGES
            for prose in [_prose(page)] for m in LINK.finditer(prose)]


# ---------------------------------------------------------------------------------------------------------------
# Commands


class _Parsed(BaseException):
    """Raised in place of the work once the real parser has accepted the arguments (a BaseException, so that a
    command's own ``except Exception`` cannot turn it into an internal error)."""


def _stop_after_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now until the test ends, every argparse parser stops the program once it has parsed: ``parse_args``
    (which still rejects unknown arguments) and ``parse_known_args`` when a program calls it itself."""
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    inside: list[object] = []

    def parse_then_stop(self, args=None, namespace=None):
        inside.append(self)
        try:
            parsed = parse_args(self, args, namespace)
        finally:
            inside.pop()
        raise _Parsed(parsed)

    def parse_known_then_stop(self, args=None, namespace=None):
        parsed = parse_known_args(self, args, namespace)
        if not inside:
            raise _Parsed(parsed)
        return parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_then_stop)


def _words(command: str) -> list[str]:
    """The words of one shell command, up to the first pipe, redirection or `&&`; `time` and `VAR=value` dropped."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if set(word) <= set("|&;<>"):
            break
        words.append(word)
    while words and (words[0] == "time" or re.fullmatch(r"[A-Za-z_]\w*=.*", words[0])):
        words.pop(0)
    return words


def _console_scripts() -> dict[str, str]:
    """The commands pyproject.toml installs (name -> ``module:function``); the installed metadata on Python 3.10."""
    try:
        import tomllib
    except ImportError:
        return {ep.name: ep.value for ep in entry_points(group="console_scripts")
                if ep.dist is not None and ep.dist.name == "njet"}
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return {t for m in re.finditer(r"^([^\s:#=][^:=\n]*):(?!=)", makefile, re.M) for t in m.group(1).split()}


def _python_target(words: list[str]) -> tuple[str, str, list[str]]:
    """``python [-X opt ...] (-m MODULE | -c CODE | SCRIPT) ARGS`` -> (kind, what, ARGS)."""
    i = 0
    while i < len(words) and words[i] in ("-X", "-W", "-u", "-B", "-O"):
        i += 2 if words[i] in ("-X", "-W") else 1
    if i >= len(words):
        return "interpreter", "", []
    if words[i] in ("-m", "-c"):
        return words[i], words[i + 1], words[i + 2:]
    return "script", words[i], words[i + 1:]


def _torchrun_target(words: list[str]) -> tuple[str, str, list[str]]:
    if "-m" in words:
        i = words.index("-m")
        return "-m", words[i + 1], words[i + 2:]
    script = next(w for w in words if not w.startswith("-") and "=" not in w and not w.isdigit())
    return "script", script, words[words.index(script) + 1:]


def _run_parsing(run: Callable[[], object], argv0: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Run ``run()`` with ``sys.argv`` set until its parser has parsed; None when it parsed, else why not."""
    monkeypatch.setattr(sys, "argv", [argv0, *args])
    _stop_after_parsing(monkeypatch)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = run()
        except _Parsed:
            return None
        except SystemExit as exit_:
            if exit_.code in (0, None) and ("--help" in args or "-h" in args):
                return None
            result = exit_.code
    return f"ended ({result!r}) without its arguments parsing: {err.getvalue().strip()[-500:]}"


def _check_command(words: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    head, args = words[0], words[1:]
    scripts = _console_scripts()
    if head in scripts:
        module, _, attr = scripts[head].partition(":")
        main = getattr(importlib.import_module(module), attr)
        return _run_parsing(lambda: main(args), head, args, monkeypatch)
    if head == "make":
        missing = [t for t in args if "=" not in t and not t.startswith("-") and t not in _make_targets()]
        return f"no make target {missing}" if missing else None
    if head == "bash":
        return None if (ROOT / args[0]).is_file() else f"no script {args[0]}"
    if head in ("python", "python3", "torchrun"):
        kind, what, rest = (_torchrun_target if head == "torchrun" else _python_target)(args)
        if kind == "-c":
            compile(what, "<python -c>", "exec")
            return None
        if kind == "-m":
            return _run_parsing(lambda: runpy.run_module(what, run_name="__main__", alter_sys=True), what, rest,
                                monkeypatch)
        if kind == "script":
            script = ROOT / what
            if not script.is_file():
                return f"no script {what}"
            monkeypatch.syspath_prepend(str(script.parent))
            return _run_parsing(lambda: runpy.run_path(str(script), run_name="__main__"), what, rest, monkeypatch)
    return f"a command the doc test does not know how to check: {head!r} (teach tests/test_docs.py)"


COMMANDS = _commands()


def test_the_docs_show_commands():
    heads = {_words(c.text)[0] for c in COMMANDS}
    assert {"njet-convert", "python", "make"} <= heads, heads


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_every_command_shown_still_parses(command, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # should a program not stop after parsing, what it writes lands here
    words = _words(command.text)
    program = 3 if words[1:2] == ["-m"] else 2 if words[0].startswith("python") else 1
    if command.inline and all(re.fullmatch(r"[A-Z][A-Z0-9_]*", w) for w in words[program:]):
        words = [*words[:program], "--help"]  # none or only placeholders: it names a program (`python -m X DIR`)
    problem = _check_command(words, monkeypatch)
    assert problem is None, f"{command}: `{command.text}`: {problem}"


# ---------------------------------------------------------------------------------------------------------------
# Python snippets


def _resolve(dotted: str) -> object:
    """The object a dotted name means, importing submodules on the way (``njet_convert.recovery.RecoverConfig``)."""
    parts = dotted.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], start=1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[: i + 1]))
    return obj


def _own_names(tree: ast.AST) -> list[str]:
    """Dotted njet names the snippet imports or uses through an imported njet module (``njet_convert.convert``)."""
    names, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                modules[bound] = alias.name if alias.asname else bound
                names.append(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"]
    for node in ast.walk(tree):
        chain = []
        while isinstance(node, ast.Attribute):
            chain.insert(0, node.attr)
            node = node.value
        if chain and isinstance(node, ast.Name) and node.id in modules:
            names.append(".".join([modules[node.id], *chain]))
    return [n for n in names if n.split(".")[0] in OWN_PACKAGES]


@pytest.mark.parametrize("snippet", _python_snippets(), ids=str)
def test_every_python_snippet_compiles_and_its_names_exist(snippet):
    tree = compile(snippet.text, str(snippet), "exec", ast.PyCF_ONLY_AST)
    missing = []
    for name in _own_names(tree):
        try:
            _resolve(name)
        except (ImportError, AttributeError):
            missing.append(name)
    assert not missing, f"{snippet}: the snippet uses names that do not exist: {missing}"


def test_python_snippets_are_found():
    assert len(_python_snippets()) >= 3


# ---------------------------------------------------------------------------------------------------------------
# Links


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens kept), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for m in HEADING.finditer(_prose(page)):
        slug = _slug(m.group(1))
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("link", [link for link in _links() if not re.match(r"[a-z]+:", link.text)], ids=str)
def test_every_relative_link_points_at_something(link):
    path, _, anchor = link.text.partition("#")
    target = (link.page.parent / path).resolve() if path else link.page
    assert target.exists(), f"{link}: {link.text} -> {target} does not exist"
    if anchor and target.suffix == ".md":
        assert anchor in _anchors(target), f"{link}: no heading #{anchor} in {target.relative_to(ROOT)}"


def test_links_are_found():
    assert any("docs/" in link.text for link in _links() if link.page.name == "README.md")


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "## Reporting problems" in readme  # the CLI's internal-error message points there
