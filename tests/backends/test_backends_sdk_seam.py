"""Only ``backends/<vendor>/_sdk.py`` names a vendor SDK module (DeepSpeed checks the same of
``torch.cuda``): no import, no module name in code, no import by computed name in hal/ or
backends/ anywhere else. Installing ``torch_npu`` without CANN breaks a bare ``import torch``,
so discovery must never reach a vendor module by another path (ARCHITECTURE, "Rules")."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: the product's code (tests and benches may fake or time vendor modules)
PRODUCT = ("hal", "backends", "scheduler", "runtime", "xpod")
#: vendor SDK modules: torch extensions and vendor management libraries
VENDOR_MODULES = {"torch_npu", "torch_mlu", "torch_musa", "pynvml", "acl", "cnpx", "pymtml", "pyrsmi", "amdsmi"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _violations(path: pathlib.Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    seam = rel.startswith("backends/") and rel.endswith("/_sdk.py")
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{rel}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            names = [node.value]
        else:
            names = []
        if not seam and any(n.split(".")[0] in VENDOR_MODULES for n in names):
            found.append(f"{where}: vendor SDK module {names} outside backends/<vendor>/_sdk.py")
        if (
            not seam
            and rel.startswith(("hal/", "backends/"))
            and isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
            )
        ):
            found.append(f"{where}: a module imported by computed name (vendor SDKs load in _sdk.py only)")
    return found


def test_vendor_sdk_modules_appear_only_in_the_sdk_seam():
    files = [p for top in PRODUCT for p in sorted((ROOT / top).rglob("*.py")) if "_pb2" not in p.name]
    assert len(files) > 100
    found = [v for p in files for v in _violations(p)]
    assert not found, "\n".join(found)


def test_the_check_finds_what_it_forbids(tmp_path, monkeypatch):
    """The scan is not vacuous: an import, a name in code and a computed import are each caught."""
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    bad = tmp_path / "hal" / "x.py"
    bad.parent.mkdir()
    bad.write_text(
        '"""torch_npu in a docstring is fine."""\n'
        "import torch_npu\n"
        "from pynvml import nvmlInit\n"
        "NAME = 'torch_mlu'\n"
        "import importlib\n"
        "importlib.import_module(NAME)\n"
    )
    found = _violations(bad)
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "6"], found
    seam = tmp_path / "backends" / "ascend" / "_sdk.py"
    seam.parent.mkdir(parents=True)
    seam.write_text("import torch_npu\nMODULE = 'torch_npu'\n")
    assert _violations(seam) == []
