"""Find the repository file paths that documentation names, and say which do not exist.

Scanned: README.md, every page under docs/, and the docstrings and comments of the Python
code (hal, backends, scheduler, runtime, proto, tools, bench, tests, deploy). A path is a
word that starts with one of the repository's top-level folders (``scheduler/store/sqlite.py``,
``tests/fixtures/smi``) or names a top-level file; it must exist in the checkout (a glob
must match something). Not paths of this repository, so not checked: words with a placeholder
(``backends/<vendor>/_sdk.py``, ``.../``), and paths that continue another path or a URL
(``volcano-sh/volcano/docs/...``, ``https://.../docs/...``).
"""

from __future__ import annotations

import ast
import glob
import io
import os
import re
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TOP = ("hal", "backends", "scheduler", "runtime", "proto", "tests", "bench", "deploy", "examples", "docs", "tools")
TOP_FILES = ("README.md", "Makefile", "pyproject.toml", "mkdocs.yml")
CODE_DIRS = ("hal", "backends", "scheduler", "runtime", "proto", "tools", "bench", "tests", "deploy")

PATH = re.compile(
    r"(?<![\w./~$-])((?:"
    + "|".join(TOP)
    + r")/[A-Za-z0-9_.*\-/]*[A-Za-z0-9_*/]|(?:"
    + "|".join(re.escape(f) for f in TOP_FILES)
    + r")\b)"
)

#: Paths that a reader creates (they are named in documentation before they exist), each with
#: why; nothing else may be missing.
ALLOWED_MISSING: dict[str, str] = {}


def _doc_files() -> list[str]:
    out = [os.path.join(REPO, "README.md")]
    for d, _, files in os.walk(os.path.join(REPO, "docs")):
        out += [os.path.join(d, f) for f in files if f.endswith(".md")]
    return sorted(out)


def _code_files() -> list[str]:
    out = []
    for top in CODE_DIRS:
        for d, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [x for x in dirs if x not in ("__pycache__", "data", "fixtures")]
            out += [os.path.join(d, f) for f in files if f.endswith(".py") and "_pb2" not in f]
    return sorted(out)


def docstrings_and_comments(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring and comment of a Python source."""
    out: list[tuple[int, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    out.append((body[0].lineno, body[0].value.value))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out.append((tok.start[0], tok.string))
    return out


def _exists(path: str) -> bool:
    path = path.rstrip("/.")
    full = os.path.join(REPO, path)
    if "*" in path:
        return bool(glob.glob(full))
    return os.path.exists(full)


def named_paths() -> list[tuple[str, int, str]]:
    """(file relative to the repository, line, path) for every path named."""
    found: list[tuple[str, int, str]] = []

    def scan(rel: str, line0: int, text: str) -> None:
        for i, line in enumerate(text.splitlines()):
            for m in PATH.finditer(line):
                found.append((rel, line0 + i, m.group(1)))

    for f in _doc_files():
        with open(f, encoding="utf-8") as fh:
            scan(os.path.relpath(f, REPO), 1, fh.read())
    for f in _code_files():
        with open(f, encoding="utf-8") as fh:
            source = fh.read()
        for line, text in docstrings_and_comments(source):
            scan(os.path.relpath(f, REPO), line, text)
    return found


def missing_paths() -> list[tuple[str, int, str]]:
    return [(f, n, p) for f, n, p in named_paths() if p.rstrip("/.") not in ALLOWED_MISSING and not _exists(p)]


MODULE_REF = re.compile(r"(?<![\w./-])(xpod(?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
#: dotted names that are not Python objects: the gRPC package, the error domain, a file name
NOT_MODULES = ("xpod.v1", "xpod.io", "xpod.db")


def resolves(dotted: str) -> bool:
    """Whether a dotted ``xpod`` name is a module, or an attribute reached from its longest
    module prefix."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def unresolved_module_refs() -> list[tuple[str, int, str]]:
    """(file, line, name) for each dotted ``xpod`` name in README.md, docs/ and the code's
    docstrings and comments that is neither a module nor an attribute of one."""
    texts: list[tuple[str, int, str]] = []
    for f in _doc_files():
        with open(f, encoding="utf-8") as fh:
            texts.append((os.path.relpath(f, REPO), 1, fh.read()))
    for f in _code_files():
        with open(f, encoding="utf-8") as fh:
            source = fh.read()
        texts += [(os.path.relpath(f, REPO), line, text) for line, text in docstrings_and_comments(source)]
    out = []
    for rel, line0, text in texts:
        for i, line in enumerate(text.splitlines()):
            for m in MODULE_REF.finditer(line):
                name = m.group(1).rstrip(".")
                if name.startswith(NOT_MODULES) or resolves(name):
                    continue
                out.append((rel, line0 + i, name))
    return out
