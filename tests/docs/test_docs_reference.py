"""The documentation stays true to the code: the site builds with --strict, the generated
reference equals what the code generates now, every metric the code names is in it, and every
repository path the docs, README and docstrings name exists."""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys

from docs_paths import ALLOWED_MISSING, REPO, _code_files, docstrings_and_comments, missing_paths

_spec = importlib.util.spec_from_file_location("gen_docs_ref", os.path.join(REPO, "tools", "gen_docs_ref.py"))
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


@functools.lru_cache(maxsize=1)
def rendered() -> dict[str, str]:
    return gen.render()


def test_site_builds_with_strict(tmp_path):
    mkdocs = os.path.join(os.path.dirname(sys.executable), "mkdocs")
    assert os.path.exists(mkdocs), "mkdocs is not installed; run `make install` (mkdocs-material is a dev dependency)"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [mkdocs, "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "mkdocs build --strict failed (`make docs` shows it):\n" + "\n".join(
        problems or [proc.stdout, proc.stderr]
    )
    assert os.path.exists(tmp_path / "site" / "reference" / "cli" / "index.html")


def test_reference_pages_match_the_code():
    pages = rendered()
    stale = gen.stale(pages)
    assert not stale, (
        f"docs/reference/{', docs/reference/'.join(stale)} differ from what the code generates now; "
        f"run `{gen.REFRESH}` (or .venv/bin/python tools/gen_docs_ref.py) and commit the pages"
    )


def test_every_metric_named_in_the_code_is_in_the_reference():
    """A metric declared in a module the generator does not read would be missing from
    docs/reference/metrics.md: every metric-like name in the code must be on the page."""
    page = rendered()["metrics.md"]
    documented = set(re.findall(r"`([a-z_:]+)`", page))
    documented |= {n[: -len("_total")] for n in documented if n.endswith("_total")}
    names = set()
    for path in _code_files():
        rel = os.path.relpath(path, REPO)
        if not rel.startswith(("hal/", "backends/", "scheduler/", "runtime/")):
            continue
        with open(path, encoding="utf-8") as f:
            for name in re.findall(r"[\"'](xpod_[a-z0-9_]+|grpc_server_[a-z_]+)[\"']", f.read()):
                names.add((name, rel))
    missing = sorted((n, rel) for n, rel in names if n not in documented and not n.startswith("xpod_test"))
    assert not missing, (
        "metric names in the code but not in docs/reference/metrics.md (add their module to "
        f"METRIC_SOURCES in tools/gen_docs_ref.py, then run `{gen.REFRESH}`): {missing}"
    )


def test_every_path_the_docs_name_exists():
    missing = missing_paths()
    assert not missing, (
        "paths named in docs, README.md or docstrings/comments that do not exist:\n"
        + "\n".join(f"  {f}:{n}: {p}" for f, n, p in missing)
        + "\nFix the text, or (only for a path the reader creates) add it to ALLOWED_MISSING in tests/docs/docs_paths.py."
    )


def test_the_path_finder_finds_paths():
    """The check above cannot pass by finding nothing."""
    text = "see `scheduler/core/model.py`, tests/unit and backends/<vendor>/_sdk.py, not https://x.org/docs/a.md"
    import docs_paths

    found = [m.group(1) for m in docs_paths.PATH.finditer(text)]
    assert found == ["scheduler/core/model.py", "tests/unit"]
    assert docstrings_and_comments('"""doc tests/unit"""\nx = 1  # see bench/x.py\n') == [
        (1, "doc tests/unit"),
        (2, "# see bench/x.py"),
    ]
    assert all(reason for reason in ALLOWED_MISSING.values())


def test_every_python_name_the_docs_give_resolves():
    from docs_paths import resolves, unresolved_module_refs

    bad = unresolved_module_refs()
    assert not bad, (
        "xpod.* names in README.md, docs/ or docstrings/comments that are no module or attribute:\n"
        + "\n".join(f"  {f}:{n}: {name}" for f, n, name in bad)
    )
    assert resolves("xpod.hal.catalog.match_model") and not resolves("xpod.scheduler.no_such_module")


def _commands_in_docs() -> list[tuple[str, int, list[str]]]:
    """(file, line, words) of every `xpod ...` command line in README.md and the hand-written
    docs pages (the generated reference is checked above)."""
    from docs_paths import _doc_files

    out = []
    for path in _doc_files():
        rel = os.path.relpath(path, REPO)
        if rel.startswith("docs/reference/"):
            continue
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                for m in re.finditer(r"(?<![\w/.$-])xpod( [^`|;#\n]*)", line):
                    out.append((rel, n, m.group(1).split()))
    return out


def unknown_flags(root, commands) -> list[tuple[str, int, str, str]]:
    """(file, line, command, flag) for each --flag a docs command line gives that its
    subcommand's parser does not have."""
    import argparse

    def subcommands(parser):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                return a.choices
        return {}

    bad = []
    for rel, n, words in commands:
        parser, path = root, []
        for w in words:
            if w not in subcommands(parser):
                break
            parser = subcommands(parser)[w]
            path.append(w)
        if not path:
            continue  # prose ("xpod is ..."), not a command
        options = {o for a in parser._actions for o in a.option_strings}
        for w in words[len(path) :]:
            flag = re.match(r"\[?(--[a-z][a-z0-9-]*)", w)
            if flag and flag.group(1) not in options:
                bad.append((rel, n, "xpod " + " ".join(path), flag.group(1)))
    return bad


def test_every_flag_the_docs_give_exists():
    from xpod.runtime.cli.main import build_parser

    root = build_parser()
    commands = _commands_in_docs()
    assert len(commands) > 50, "the docs' xpod commands were not found"
    bad = unknown_flags(root, commands)
    assert not bad, "flags in README.md or docs/ that the command does not have:\n" + "\n".join(
        f"  {f}:{n}: {cmd} {flag}" for f, n, cmd, flag in bad
    )
    assert unknown_flags(root, [("x", 1, ["up", "--no-such-flag", "--state-dir", "d"])]) == [
        ("x", 1, "xpod up", "--no-such-flag")
    ]
