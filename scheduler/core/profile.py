"""Scheduler profiles: which actions run, in which order, with which plugins.

A profile is YAML (or a dict); ``policies`` lists the plugins (``scheduler/core/plugins/``)::

    actions: [enqueue, allocate, backfill, shrink, preempt, reclaim]
    policies:
      - gang
      - topology
      - node-selector
      - name: ascend
        args: {reserve_nodes: 2}
      - binpack
      - fragmentation
      - drf
      - name: priority
        args: {aging_per_hour: 1}
    estimate_depth: 256   # optional: queue positions per queue that get an estimated start
    notice: true          # optional: tasks that must stop get the XPOD_PREEMPT_NOTICE file touched
                          # before SIGTERM (false: SIGTERM alone, as Kubernetes preemption)
    lend: true            # optional (default false; the default profile's true): behind a head
                          # whose start is unknown, backfill lends jobs devices the head takes
                          # back by preemption when it can start (actions/backfill.py; needs preempt)

An unknown action, plugin, key or argument is an ``XpodError`` at load time naming the file
and the field, never a log line; so is a plugin that implements no extension point, and two
plugins that answer the same one-answer point (``node_order``: binpack and spread).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from xpod.hal.errors import XpodError

from . import plugins
from .actions import ACTIONS
from .framework import PLUGINS, Plugin, check_plugin, points_of

DEFAULT_PROFILE: dict[str, Any] = {
    "actions": ["enqueue", "allocate", "backfill", "shrink", "preempt", "reclaim"],
    "policies": list(plugins.DEFAULT),
    "lend": True,
}

#: points where one plugin's answer decides (a second one would silently lose)
_ONE_ANSWER = ("node_order", "queue_key", "job_key", "effective", "min_tasks", "tiers", "scale_rule")


#: queue positions per queue whose estimated start a cycle computes (a walk of the queue in
#: order; later positions say "not computed"): bounds a cycle's cost however long the queue
DEFAULT_ESTIMATE_DEPTH = 256


@dataclasses.dataclass(frozen=True)
class Profile:
    actions: tuple[str, ...]
    policies: tuple[tuple[str, Mapping[str, Any]], ...]
    estimate_depth: int = DEFAULT_ESTIMATE_DEPTH  # see DEFAULT_ESTIMATE_DEPTH
    # a task that must stop (preempted, shrunk, scaled down) gets its notice file touched with
    # SIGTERM, so it can checkpoint in its grace period; False: SIGTERM alone (Kubernetes)
    notice: bool = True
    # behind a blocked head whose start is unknown, backfill lends jobs devices the head takes
    # back (``preempt``) when it can start (``actions.backfill``); False: such jobs wait (EASY)
    lend: bool = False

    def build_plugins(self) -> list[Plugin]:
        return [PLUGINS[name](**dict(args)) for name, args in self.policies]


def profile_from_dict(data: Any, source: str = "profile") -> Profile:
    if not isinstance(data, Mapping):
        raise XpodError(f"{source}: a profile is a mapping with 'actions' and 'policies'")
    unknown = set(data) - {"actions", "policies", "estimate_depth", "notice", "lend"}
    if unknown:
        raise XpodError(
            f"{source}: unknown key {sorted(unknown)[0]!r} (allowed: actions, policies, estimate_depth, notice, lend)"
        )
    notice = data.get("notice", True)
    if not isinstance(notice, bool):
        raise XpodError(f"{source}: notice: {notice!r} must be true or false")
    lend = data.get("lend", False)
    if not isinstance(lend, bool):
        raise XpodError(f"{source}: lend: {lend!r} must be true or false")
    depth = data.get("estimate_depth", DEFAULT_ESTIMATE_DEPTH)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise XpodError(
            f"{source}: estimate_depth: {depth!r} must be a whole number >= 0 (queue positions that get an estimated start)"
        )
    actions = data.get("actions", DEFAULT_PROFILE["actions"])
    if not isinstance(actions, list) or not actions:
        raise XpodError(f"{source}: actions: a non-empty list of {', '.join(ACTIONS)}")
    for i, a in enumerate(actions):
        if a not in ACTIONS:
            raise XpodError(f"{source}: actions[{i}]: unknown action {a!r} (known: {', '.join(ACTIONS)})")
    pols = data.get("policies", DEFAULT_PROFILE["policies"])
    if not isinstance(pols, list):
        raise XpodError(f"{source}: policies: a list of policy names or {{name, args}} mappings")
    out = []
    for i, p in enumerate(pols):
        args: Mapping[str, Any]
        if isinstance(p, str):
            name, args = p, {}
        elif isinstance(p, Mapping):
            extra = set(p) - {"name", "args"}
            if extra:
                raise XpodError(f"{source}: policies[{i}]: unknown key {sorted(extra)[0]!r} (allowed: name, args)")
            name, args = str(p.get("name")), p.get("args") or {}
            if not isinstance(args, Mapping):
                raise XpodError(f"{source}: policies[{i}].args: must be a mapping")
        else:
            raise XpodError(f"{source}: policies[{i}]: a policy name or a {{name, args}} mapping")
        if name not in PLUGINS:
            raise XpodError(f"{source}: policies[{i}]: unknown plugin {name!r} (known: {', '.join(PLUGINS)})")
        cls = PLUGINS[name]
        try:
            check_plugin(cls)
        except XpodError as err:
            raise XpodError(f"{source}: policies[{i}]: {err}") from None
        for k, v in args.items():
            if k not in cls.ARGS:
                allowed = ", ".join(cls.ARGS) or "none"
                raise XpodError(f"{source}: policies[{i}] ({name}): unknown argument {k!r} (allowed: {allowed})")
            default = cls.ARGS[k]
            choices = getattr(cls, "CHOICES", {}).get(k)
            if choices is not None and v not in choices:
                raise XpodError(
                    f"{source}: policies[{i}] ({name}).args.{k}: {v!r} is not one of {', '.join(map(str, choices))}"
                )
            if isinstance(default, (int, float)) and (
                isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0  # nan too
            ):
                raise XpodError(f"{source}: policies[{i}] ({name}).args.{k}: {v!r} must be a non-negative number")
        try:  # a plugin checks how its arguments go together when built: build it once here, so it speaks at load
            cls(**args)
        except XpodError as err:
            raise XpodError(f"{source}: policies[{i}] ({name}).{err}") from None
        except (ValueError, TypeError, OverflowError) as err:  # e.g. a seed of .inf, which no int holds
            raise XpodError(f"{source}: policies[{i}] ({name}).args: {err}; give finite values") from None
        out.append((name, dict(args)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise XpodError(f"{source}: policies: {twice} is listed twice; keep one")
    for point in _ONE_ANSWER:
        answering = [n for n in names if point in points_of(PLUGINS[n])]
        if len(answering) > 1:
            raise XpodError(
                f"{source}: policies: {' and '.join(answering)} both answer {point} and contradict each other; keep one"
            )
    if lend and "preempt" not in actions:
        raise XpodError(
            f"{source}: lend: true needs the preempt action (a lent job is taken back by preemption); add preempt to actions"
        )
    return Profile(tuple(actions), tuple(out), depth, notice, lend)


def load_profile(path: str) -> Profile:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise XpodError(f"{path}: no such profile file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise XpodError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    return profile_from_dict(data, path)


def default_profile() -> Profile:
    return profile_from_dict(DEFAULT_PROFILE, "default profile")
