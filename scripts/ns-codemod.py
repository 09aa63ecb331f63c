#!/usr/bin/env python3
"""Moves dxkpi's module names under one `dxkpi` package (issue #9 item 8).

    collector...  -> dxkpi.collector...
    tasks...      -> dxkpi.tasks...
    connectors... -> dxkpi.connectors...

The folders stay where they are; only the names code uses to reach them change. Rewritten:

* Python imports: `import collector.x as y`, `from tasks.app import app`, `import connectors`
  (relative imports are left alone);
* dotted module names inside Python strings and comments, and in the text files below:
  "collector.cli:main", "tasks.collect", mock/patch targets, `celery --app tasks.app`,
  `python -m collector.foo`; a name is only rewritten when its first part after the package is a
  real module or package in the repository (so `tasks.py` or a variable `tasks.append` stays);
* a bare package name where it is one: `"-m", "collector"` argument lists, `-m collector` in
  text, `PackageLoader("collector", ...)`, `import_module("connectors")`, `BUILTIN_PACKAGE =
  "connectors"`.

Text files: *.md (not CHANGELOG.md: it records the past), *.toml, *.cfg, *.ini, *.yml, *.yaml,
*.txt, *.sh, *.j2, *.mako, Dockerfile*, and extension-less scripts under scripts/ and .ci/.
Never read: .git, virtualenvs, build output, caches, *.egg-info, generated *.json (regenerate
the schema and dashboards instead), bench/results, symbolic links (`dxkpi/collector` is one),
and files holding the marker `ns-codemod: skip-file` (this script, its tests).

Idempotent: names already under `dxkpi.` are never touched, so a second run changes nothing.

usage: python3 ns-codemod.py [REPO_ROOT] [--check]
  Prints every change as `path:line: old -> new`. --check writes nothing and exits 1 when
  something would change.
"""

# ns-codemod: skip-file

from __future__ import annotations

import ast
import io
import os
import re
import sys
import tokenize
from pathlib import Path

TOPS = ("collector", "tasks", "connectors")
NAMESPACE = "dxkpi"

SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "build",
    "dist",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "node_modules",
    "data",
}
SKIP_PATHS = {"bench/results"}
TEXT_SUFFIXES = {".md", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".txt", ".sh", ".j2", ".mako"}
SKIP_FILES = {"CHANGELOG.md"}  # it records the past
# A file holding this marker is left alone (this script, the tests of it).
SKIP_MARKER = "ns-codemod: " + "skip-file"
SCRIPT_DIRS = {"scripts", ".ci"}

# `collector.x...` not preceded by a name character, a dot (already `dxkpi.collector`), a dash
# or a slash (a path or a hyphenated word).
DOTTED = re.compile(r"(?<![\w.\-/@])(" + "|".join(TOPS) + r")((?:\.[A-Za-z_]\w*)+)")
# `-m collector` (the package run as a program) in text.
DASH_M = re.compile(r"(-m\s+)(" + "|".join(TOPS) + r")(?![\w.\-/])")
# Calls whose first argument is a package name.
PACKAGE_ARG_CALLS = {"PackageLoader", "import_module", "__import__", "find_spec", "files"}
# Module-level constants holding a package name.
PACKAGE_CONSTANTS = {"BUILTIN_PACKAGE"}


class Codemod:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.changes: list[str] = []

    # -- what counts as a real module ---------------------------------------------------------

    def is_module(self, top: str, rest: str) -> bool:
        """`rest` is ".x.y...": true when top/x is a module or a package in the repository."""
        first = rest.split(".")[1]
        base = self.root / top
        return (base / f"{first}.py").is_file() or (base / first / "__init__.py").is_file()

    def is_package(self, top: str) -> bool:
        return (self.root / top / "__init__.py").is_file()

    def rewrite_text(self, text: str) -> str:
        def dotted(m: re.Match[str]) -> str:
            top, rest = m.group(1), m.group(2)
            return f"{NAMESPACE}.{top}{rest}" if self.is_module(top, rest) else m.group(0)

        def dash_m(m: re.Match[str]) -> str:
            top = m.group(2)
            if (self.root / top / "__main__.py").is_file():
                return f"{m.group(1)}{NAMESPACE}.{top}"
            return m.group(0)

        return DASH_M.sub(dash_m, DOTTED.sub(dotted, text))

    # -- Python -------------------------------------------------------------------------------

    def rewrite_python(self, source: str) -> str:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        edits: list[tuple[tuple[int, int], tuple[int, int], str]] = []
        significant = [
            t for t in tokens if t.type not in (tokenize.NL, tokenize.COMMENT, tokenize.ENCODING)
        ]
        for i, tok in enumerate(significant):
            prev = significant[i - 1] if i else None
            statement_start = (
                prev is None
                or prev.type
                in (
                    tokenize.NEWLINE,
                    tokenize.INDENT,
                    tokenize.DEDENT,
                )
                or (prev.type == tokenize.OP and prev.string in (";", ":"))
            )
            if tok.type == tokenize.NAME and tok.string == "from" and statement_start:
                nxt = significant[i + 1]
                if nxt.type == tokenize.NAME and nxt.string in TOPS:
                    edits.append((nxt.start, nxt.end, f"{NAMESPACE}.{nxt.string}"))
            elif tok.type == tokenize.NAME and tok.string == "import" and statement_start:
                edits.extend(self._import_edits(significant, i + 1))
            elif tok.type == tokenize.STRING:
                new = self._string(tok, significant, i)
                if new != tok.string:
                    edits.append((tok.start, tok.end, new))
        for tok in tokens:
            if tok.type == tokenize.COMMENT:
                new = self.rewrite_text(tok.string)
                if new != tok.string:
                    edits.append((tok.start, tok.end, new))
        return _apply(source, edits)

    def _import_edits(
        self, significant: list[tokenize.TokenInfo], j: int
    ) -> list[tuple[tuple[int, int], tuple[int, int], str]]:
        """`import a.b as c, d`: each dotted name starting with one of TOPS."""
        edits = []
        while j < len(significant):
            first = significant[j]
            if first.type != tokenize.NAME:
                break
            k = j + 1  # past the dotted name
            while (
                k + 1 < len(significant)
                and significant[k].string == "."
                and significant[k + 1].type == tokenize.NAME
            ):
                k += 2
            alias = k < len(significant) and significant[k].string == "as"
            if first.string in TOPS:
                if alias:
                    edits.append((first.start, first.end, f"{NAMESPACE}.{first.string}"))
                elif k == j + 1:
                    # `import tasks` binds `tasks`: keep that name bound
                    edits.append(
                        (first.start, first.end, f"{NAMESPACE}.{first.string} as {first.string}")
                    )
                else:
                    edits.append((first.start, first.end, f"{NAMESPACE}.{first.string}"))
                    print(
                        f"WARNING: line {first.start[0]}: `import {first.string}.…` now binds "
                        f"`{NAMESPACE}`; rewrite this file's uses of `{first.string}.…` by hand",
                        file=sys.stderr,
                    )
            if alias:
                k += 2
            if k < len(significant) and significant[k].string == ",":
                j = k + 1
                continue
            break
        return edits

    def _string(
        self, tok: tokenize.TokenInfo, significant: list[tokenize.TokenInfo], i: int
    ) -> str:
        text = tok.string
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):  # f-strings and the like: dotted names only
            value = None
        if isinstance(value, str) and value in TOPS and self.is_package(value):
            before = [t.string for t in significant[max(0, i - 3) : i]]
            # "-m", "collector"
            dash_m = (
                len(before) >= 2 and before[-1] == "," and _str_value(significant[i - 2]) == "-m"
            )
            # PackageLoader("collector", ...) / import_module("connectors")
            call = len(before) >= 2 and before[-1] == "(" and before[-2] in PACKAGE_ARG_CALLS
            # BUILTIN_PACKAGE = "connectors"
            constant = len(before) >= 2 and before[-1] == "=" and before[-2] in PACKAGE_CONSTANTS
            if dash_m or call or constant:
                quote_at = min(text.index(q) for q in "'\"" if q in text)
                return (
                    f"{text[: quote_at + 1]}{NAMESPACE}.{value}{text[quote_at + 1 + len(value) :]}"
                )
        return self.rewrite_text(text)

    # -- files --------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        found = []
        me = Path(__file__).resolve()
        for dirpath, dirnames, filenames in os.walk(self.root):  # never follows links
            rel_dir = Path(dirpath).relative_to(self.root)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in SKIP_DIRS
                and not d.endswith(".egg-info")
                and str(rel_dir / d) not in SKIP_PATHS
                and not (Path(dirpath) / d).is_symlink()
            )
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or path.resolve() == me or name in SKIP_FILES:
                    continue
                suffix = path.suffix
                if (
                    suffix == ".py"
                    or suffix in TEXT_SUFFIXES
                    or name.startswith("Dockerfile")
                    or (not suffix and rel_dir.parts[:1] and rel_dir.parts[0] in SCRIPT_DIRS)
                ):
                    found.append(path)
        return found

    def run(self, write: bool) -> int:
        changed_files = 0
        for path in self.files():
            try:
                old = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if SKIP_MARKER in old:
                continue
            if path.suffix == ".py":
                try:
                    new = self.rewrite_python(old)
                except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
                    print(f"SKIPPED {path}: cannot tokenize ({exc})", file=sys.stderr)
                    continue
            else:
                new = self.rewrite_text(old)
            if new == old:
                continue
            changed_files += 1
            rel = path.relative_to(self.root)
            for n, (a, b) in enumerate(zip(old.splitlines(), new.splitlines(), strict=False), 1):
                if a != b:
                    print(f"{rel}:{n}: {a.strip()}  ->  {b.strip()}")
            if write:
                path.write_text(new, encoding="utf-8")
        return changed_files


def _str_value(tok: tokenize.TokenInfo) -> object:
    if tok.type != tokenize.STRING:
        return None
    try:
        return ast.literal_eval(tok.string)
    except (ValueError, SyntaxError):
        return None


def _apply(source: str, edits: list[tuple[tuple[int, int], tuple[int, int], str]]) -> str:
    if not edits:
        return source
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def at(pos: tuple[int, int]) -> int:
        return offsets[pos[0] - 1] + pos[1]

    out = source
    for start, end, text in sorted(edits, key=lambda e: at(e[0]), reverse=True):
        out = out[: at(start)] + text + out[at(end) :]
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    args = [a for a in argv if a != "--check"]
    root = Path(args[0] if args else ".").resolve()
    if not all((root / top / "__init__.py").is_file() for top in TOPS):
        print(f"{root}: not a dxkpi checkout (no {', '.join(TOPS)} packages)", file=sys.stderr)
        return 2
    changed = Codemod(root).run(write=not check)
    verb = "would change" if check else "changed"
    print(f"{verb} {changed} file(s)", file=sys.stderr)
    return 1 if check and changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
