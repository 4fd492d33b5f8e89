"""Regenerate the Python code of ``xpod/v1/*.proto``: the one pinned command (``make proto``).

Run ``python proto/generate.py`` from the repository root (or ``--out DIR`` to write
elsewhere, which the drift test does and compares byte for byte with what is committed).

Pinned: grpcio-tools ``PINNED_GRPCIO_TOOLS`` (it bundles protoc); another version may emit
different code, so this refuses to run with one. protoc writes absolute imports
(``from xpod.v1 import types_pb2``); they are rewritten to the installed package path
(``xpod.proto.xpod.v1``) so the code imports from a wheel as well as from the tree.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import sys
import tempfile

PINNED_GRPCIO_TOOLS = "1.85.1"
HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "xpod", "v1")
HEADER = (
    "# DO NOT EDIT: generated from proto/xpod/v1/{proto} by `make proto`\n"
    "# (proto/generate.py, grpcio-tools=={version}). Edit the .proto and regenerate.\n"
)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[str]:
    return sorted(f for f in os.listdir(PROTO_DIR) if f.endswith(".proto"))


def generated_names() -> list[str]:
    """Every file this script writes into xpod/v1, for the drift check."""
    names = []
    for proto in proto_files():
        stem = proto[: -len(".proto")]
        names += [stem + "_pb2.py", stem + "_pb2.pyi"]
        # grpc stubs exist for every file; protoc writes an empty-ish one for message-only files.
        names.append(stem + "_pb2_grpc.py")
    return sorted(names)


def generate(out_dir: str) -> list[str]:
    """Write the generated modules into ``out_dir`` (flat); returns the file names."""
    version = importlib.metadata.version("grpcio-tools")
    if version != PINNED_GRPCIO_TOOLS:
        raise SystemExit(
            f"proto/generate.py: grpcio-tools {version} is installed, the pin is {PINNED_GRPCIO_TOOLS}; "
            f"run: pip install grpcio-tools=={PINNED_GRPCIO_TOOLS}"
        )
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{HERE}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
        ] + [os.path.join("xpod", "v1", p) for p in proto_files()]
        cwd = os.getcwd()
        os.chdir(HERE)
        try:
            rc = protoc.main(args)
        finally:
            os.chdir(cwd)
        if rc != 0:
            raise SystemExit(f"proto/generate.py: protoc failed with exit code {rc}")
        written = []
        src_dir = os.path.join(tmp, "xpod", "v1")
        os.makedirs(out_dir, exist_ok=True)
        for name in sorted(os.listdir(src_dir)):
            if not name.endswith(GENERATED_SUFFIXES):
                continue
            with open(os.path.join(src_dir, name), encoding="utf-8") as f:
                text = f.read()
            text = re.sub(r"^from xpod\.v1 import ", "from xpod.proto.xpod.v1 import ", text, flags=re.M)
            proto = re.sub(r"_pb2(_grpc)?\.pyi?$", ".proto", name)
            text = HEADER.format(proto=proto, version=version) + text
            with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
                f.write(text)
            written.append(name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=PROTO_DIR, help="where to write (default: proto/xpod/v1)")
    args = parser.parse_args(argv)
    if os.path.abspath(args.out) == PROTO_DIR:
        for name in os.listdir(PROTO_DIR):
            if name.endswith(GENERATED_SUFFIXES):
                os.remove(os.path.join(PROTO_DIR, name))
    written = generate(args.out)
    print(f"generated {len(written)} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
