"""Job files: YAML read with line marks, so a field the server names maps back to its line.

Envelope problems (not YAML, not a mapping, an unknown kind, values JSON lacks) are
``FILE:LINE: message`` ``XpodError``s.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from xpod.hal.errors import XpodError

JOB_KINDS = ("TrainingJob", "ServingJob", "BatchJob")


@dataclasses.dataclass(frozen=True)
class JobFile:
    path: str
    document: dict[str, Any]
    root: Any  # the composed yaml node, to map field paths back to lines

    def line_of(self, field: str) -> int:
        """1-based line of a dotted field path (``spec.tasks``, ``spec.containers[0].image``);
        the deepest node found along the path."""
        import re

        node = self.root
        line = node.start_mark.line + 1
        for part in re.findall(r"[^.\[\]]+|\[\d+\]", field):
            if part.startswith("[") and isinstance(node, yaml.SequenceNode):
                i = int(part[1:-1])
                if i >= len(node.value):
                    break
                node = node.value[i]
            elif isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == part), None)
                if match is None:
                    break
                line = match[0].start_mark.line + 1
                node = match[1]
                continue
            else:
                break
            line = node.start_mark.line + 1
        return line


def load_job_file(path: str) -> JobFile:
    """Read a job file; envelope problems are ``FILE:LINE: message`` XpodErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise XpodError(f"{path}: cannot read the job file: {err.strerror}") from None
    try:
        root = yaml.compose(text)
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise XpodError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', None) or err}") from None
    if root is None or not isinstance(document, dict):
        raise XpodError(f"{path}:1: a job file is a mapping with kind, metadata and spec")
    job = JobFile(path, document, root)
    kind = document.get("kind")
    if kind not in JOB_KINDS:
        line = job.line_of("kind") if "kind" in document else 1
        raise XpodError(f"{path}:{line}: kind must be one of {', '.join(JOB_KINDS)} (got {kind!r})")
    _check_json_values(job, document, "")
    return job


def _check_json_values(job: JobFile, value: Any, path: str) -> None:
    # YAML has values JSON (and the API) lacks: dates, binary, non-string keys.
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise XpodError(f"{job.path}:{job.line_of(path)}: {path or 'document'}: key {k!r} must be a string")
            _check_json_values(job, v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_values(job, v, f"{path}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise XpodError(
            f"{job.path}:{job.line_of(path)}: {path}: {type(value).__name__} value {value!r} is not allowed; quote it as a string"
        )
