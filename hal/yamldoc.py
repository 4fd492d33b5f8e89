"""YAML documents read with marks: every problem as ``FILE:LINE:COL: message``, all at once.

The machinery behind cluster descriptors (``hal.cluster``) and job files
(``scheduler.jobspec``):

- ``read_text(path)``: the file as text, or one line saying why not (unreadable, binary, not
  UTF-8);
- ``compose_one(text, ...)``: one YAML document's node tree, or the syntax error with its line
  and column; an empty file and a second document are problems too;
- ``Located``: the plain data of a node tree plus the line and column of every key and value;
  aliases that recurse or expand beyond ``MAX_VALUES`` values ("billion laughs"), merge keys,
  non-text keys and duplicate keys are problems, not followed;
- ``schema_problems``: JSON Schema errors as messages with a did-you-mean for unknown keys and
  the complete list of allowed keys otherwise;
- ``Problems``: (line, col, message) triples, 0-based, turned into sorted one-line messages.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from .catalog import did_you_mean
from .errors import XpodError

Path = tuple  # of str keys and int indices
Problem = tuple  # (line, col, message), line and col 0-based
FieldError = tuple  # (path, key, message): key = the key itself is wrong, not its value


class DocumentError(XpodError):
    """A document with problems. ``messages`` holds every ``FILE:LINE:COL: message`` line;
    ``str()`` is the first one plus how many more follow (one line, as XpodError requires)."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        more = f" (and {len(messages) - 1} more problem(s))" if len(messages) > 1 else ""
        super().__init__(messages[0] + more)


def format_problems(source: str, problems: list[Problem]) -> list[str]:
    """Sorted, de-duplicated ``SOURCE:LINE:COL: message`` lines (1-based). A value quoted in the
    file may hold a line break: every message stays one line."""
    return [
        f"{source}:{line + 1}:{col + 1}: {msg}".replace("\r", "\\r").replace("\n", "\\n")
        for line, col, msg in sorted(set(problems))
    ]


def read_text(path: str | os.PathLike) -> str:
    """A file's text; an unreadable, binary or non-UTF-8 file is one ``XpodError`` line naming it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise XpodError(f"{path}: cannot read: {err.strerror}") from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise XpodError(f"{path}: binary data (a NUL byte at byte {nul}), not YAML text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise XpodError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def pos_of(node: Any) -> tuple[int, int]:
    return (node.start_mark.line, node.start_mark.column)


def fmt_path(path: Path) -> str:
    """``spec.devices.count``, ``spec.command[0]``; ``the document`` for the root."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "the document"


def type_word(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    return {int: "a number", float: "a number", str: "text", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    )


def compose_one(text: str, *, empty: str, several: str) -> tuple[Any, list[Problem]]:
    """The node tree of the one YAML document in ``text``, or (None, problems): a syntax error
    with its mark, ``empty`` when there is no document, ``several`` when there is a second."""
    import yaml

    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        what = err.problem or err.context or "cannot parse"
        if err.context and err.problem:
            what = f"{err.problem} ({err.context}"
            if err.context_mark is not None and err.context_mark is not mark:
                what += f" started at line {err.context_mark.line + 1}, column {err.context_mark.column + 1}"
            what += ")"
        return None, [(mark.line if mark else 0, mark.column if mark else 0, f"YAML syntax error: {what}")]
    except yaml.YAMLError as err:
        return None, [(0, 0, f"YAML error: {str(err).splitlines()[0]}")]
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        return None, [(0, 0, empty)]
    if len(nodes) > 1:
        return None, [(pos_of(nodes[1])[0], 0, several)]
    return nodes[0], []


class Located:
    """The plain data of a YAML document and the (line, col) of every key and value."""

    #: values built at most; aliases can make a short file expand exponentially ("billion laughs")
    MAX_VALUES = 200_000

    def __init__(self) -> None:
        self.value_at: dict[Path, tuple[int, int]] = {}
        self.key_at: dict[Path, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self._open: set[int] = set()  # ids of the nodes being built on the current path
        self._built = 0

    def build(self, node: Any, path: Path = ()) -> Any:
        import yaml

        self._built += 1
        if self._built > self.MAX_VALUES:
            if self._built == self.MAX_VALUES + 1:
                self.problems.append(
                    (
                        *pos_of(node),
                        f"the document expands to more than {self.MAX_VALUES} values (YAML aliases?); write it out plainly",
                    )
                )
            return None
        if id(node) in self._open:
            self.problems.append(
                (*pos_of(node), "a YAML alias refers to a value that contains it; remove the recursive alias")
            )
            return None
        self.value_at[path] = (node.start_mark.line, node.start_mark.column)
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self._open.add(id(node))
            try:
                return self._build_collection(node, path)
            finally:
                self._open.discard(id(node))
        loader = yaml.SafeLoader("")
        try:
            return loader.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            self.problems.append((*pos_of(node), f"cannot read value: {str(err).splitlines()[0]}"))
            return None

    def _build_collection(self, node: Any, path: Path) -> Any:
        import yaml

        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for knode, vnode in node.value:
                if knode.tag == "tag:yaml.org,2002:merge":
                    self.problems.append((*pos_of(knode), "merge keys ('<<') are not supported; write the keys out"))
                    continue
                if not isinstance(knode, yaml.ScalarNode):
                    self.problems.append((*pos_of(knode), "a key must be plain text"))
                    continue
                key = knode.value
                if key in out:
                    self.problems.append((*pos_of(knode), f"duplicate key {key!r} in {fmt_path(path)}"))
                self.key_at[path + (key,)] = pos_of(knode)
                out[key] = self.build(vnode, path + (key,))
            return out
        return [self.build(v, path + (i,)) for i, v in enumerate(node.value)]

    def pos(self, path: Path, key: bool = False) -> tuple[int, int]:
        """Where ``path`` is written (its key when ``key``), else its nearest parent."""
        p = tuple(path)
        if key and p in self.key_at:
            return self.key_at[p]
        while p not in self.value_at and p:
            p = p[:-1]
        return self.value_at.get(p, (0, 0))


_TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "object": "a mapping",
    "array": "a list",
    "boolean": "true or false",
    "null": "empty",
}

#: a document-specific message for a value that fails a ``pattern``: (path, value, pattern) -> text or None
PatternMessage = Callable[[Path, Any, str], "str | None"]


def schema_errors(validator: Any, data: Any, pattern_message: PatternMessage | None = None) -> list[FieldError]:
    """Every JSON Schema error of ``data`` (a ``jsonschema`` validator's) as (path, key, message):
    ``key`` when the problem is the key itself (unknown, missing) rather than its value. Errors
    under a ``oneOf``/``anyOf`` are reported through their best match."""
    out: list[FieldError] = []
    for err in validator.iter_errors(data):
        for e in _alternative(err):
            out.extend(_schema_message(e, pattern_message))
    return out


def _alternative(err: Any) -> list[Any]:
    """A ``oneOf``/``anyOf`` error as the errors of the branch the value was meant for: the first
    branch whose type the value has (``replicas: {min: 0}`` is judged as a mapping, not as a
    number); every branch's type wrong: the error itself."""
    if err.validator not in ("oneOf", "anyOf") or not err.context:
        return [err]
    branches: dict[Any, list[Any]] = {}
    for e in err.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    for errors in branches.values():
        if not any(e.validator == "type" and not e.relative_path for e in errors):
            return [x for e in errors for x in _alternative(e)]
    return [err]


def schema_problems(
    validator: Any, data: Any, doc: Located, pattern_message: PatternMessage | None = None
) -> list[Problem]:
    """``schema_errors`` placed at their lines and columns in ``doc``."""
    return [(*doc.pos(path, key=key), msg) for path, key, msg in schema_errors(validator, data, pattern_message)]


def _schema_message(err: Any, pattern_message: PatternMessage | None) -> list[FieldError]:
    path = tuple(err.absolute_path)
    where = fmt_path(path)
    v = err.validator
    inst = err.instance

    def at(msg: str, p: Path = path, key: bool = False) -> list[FieldError]:
        return [(p, key, msg)]

    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        # "x-elsewhere": {key: why}: keys a schema leaves out on purpose, with the reason (a key
        # that belongs to another kind of document); editors ignore the unknown keyword
        elsewhere = err.schema.get("x-elsewhere", {})
        out = []
        for key in sorted(str(k) for k in inst if k not in allowed):
            hint = f": {elsewhere[key]}" if key in elsewhere else None
            hint = hint or did_you_mean(key, allowed) or " (allowed: " + ", ".join(allowed) + ")"
            out += at(f"unknown key {key!r} in {where}{hint}", path + (key,), key=True)
        return out
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else err.message
        return at(f"{where}: missing required key {missing!r}", key=True)
    if v == "type":
        want = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        shown = "null" if inst is None else ("true" if inst is True else "false" if inst is False else repr(inst))
        hint = (
            "; YAML reads yes/no/on/off unquoted as a boolean: quote it"
            if isinstance(inst, bool) and "string" in want
            else ""
        )
        words = " or ".join(_TYPE_WORDS.get(str(w), str(w)) for w in want)
        return at(f"{where} must be {words}, got {shown} ({type_word(inst)}{hint})")
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return at(f"{where} must be {op} {err.validator_value}, got {inst!r}")
    if v == "pattern":
        msg = pattern_message(path, inst, err.validator_value) if pattern_message else None
        return at(msg or f"{where}: {inst!r} does not have the expected form ({err.validator_value})")
    if v == "maxLength":
        return at(f"{where}: {inst!r} is longer than {err.validator_value} characters")
    if v == "minLength":
        return at(f"{where} must not be empty")
    if v == "minItems":
        return at(f"{where} must list at least {err.validator_value} item(s)")
    if v == "minProperties":
        return at(f"{where} must have at least {err.validator_value} key(s)")
    if v == "enum":
        choices = [str(c) for c in err.validator_value]
        return at(f"{where}: {inst!r} is not one of {', '.join(choices)}{did_you_mean(str(inst), choices)}")
    if v == "const":
        return at(f"{where} must be {err.validator_value!r}, got {inst!r}")
    if v == "propertyNames":
        return at(f"{where}: key {inst!r} is not a valid name", path + (inst,), key=True)
    if v in ("oneOf", "anyOf"):
        return at(f"{where}: {inst!r} is not {err.schema.get('description') or 'any of the allowed forms'}")
    if v == "not":
        return at(f"{where}: {err.schema.get('description') or 'not allowed here'}", key=True)
    return at(f"{where}: {err.message}")


def load_plain(path: str | os.PathLike, *, empty: Any = None) -> Any:
    """The plain data of the YAML file at ``path`` with the guards of every xpod loader (no
    recursive alias, no expansion past ``Located.MAX_VALUES``, one document); any problem is
    one ``XpodError`` naming ``FILE:LINE:COL``. ``empty``: the value of an empty file."""
    source = os.fspath(path)
    node, problems = compose_one(read_text(source), empty="", several="a second YAML document; keep one")
    if node is None and problems == [(0, 0, "")]:
        return empty
    if node is not None:
        located = Located()
        data = located.build(node)
        problems = located.problems
    if problems:
        raise XpodError(format_problems(source, problems)[0])
    return data
