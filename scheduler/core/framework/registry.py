"""Plugins: the base class, the registry profiles name plugins from, and the ``Framework`` that
resolves the enabled plugins per extension point once.

A plugin is a class with a ``name``, the arguments it accepts (``ARGS``, with defaults), the job
fields it gives meaning to (``JOB_FIELDS``), and one method per extension point it implements
(``framework.points``). ``register`` checks a plugin when it is registered and a profile checks
it again when it loads: a plugin that implements no extension point, or has a public method that
is no extension point (a misspelt ``scor``), is an error then, never a plugin silently ignored.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterable, Sequence

from xpod.hal.errors import XpodError

from ..model import Job
from .points import (
    POINTS,
    Blocks,
    CycleContext,
    DeviceSelect,
    DomainBlocks,
    Filter,
    Gang,
    JobOrder,
    NodeOrder,
    Observe,
    Permit,
    PreFilter,
    Priority,
    QueueOrder,
    Reserve,
    Scale,
    Score,
    Session,
    Tiers,
    VictimClassBound,
    VictimSelect,
)
from .status import SUCCESS, Code, Status

_POINTS_OF: dict[type, tuple[str, ...]] = {}

#: job fields that mean something only through a plugin: a job setting one that no enabled
#: plugin acts on (its ``JOB_FIELDS`` names it and its ``pre_filter`` does not skip the job) is
#: refused at submit, never placed as if the field were not there
PLUGIN_FIELDS = ("node_selector", "domain_block", "autoscale")


class Plugin:
    """Base of every plugin. Subclasses set ``name`` and implement extension points."""

    name: ClassVar[str] = ""
    ARGS: ClassVar[dict[str, Any]] = {}  # argument -> default (its type is the argument's type)
    JOB_FIELDS: ClassVar[tuple[str, ...]] = ()  # ``PLUGIN_FIELDS`` this plugin acts on

    def __init__(self, **args: Any) -> None:
        unknown = sorted(set(args) - set(self.ARGS))
        if unknown:
            allowed = ", ".join(self.ARGS) or "none"
            raise XpodError(f"plugin {self.name}: unknown argument {unknown[0]!r} (allowed: {allowed})")
        for k, default in self.ARGS.items():
            v = args.get(k, default)
            setattr(self, k, type(default)(v) if default is not None else v)


def points_of(cls: type) -> tuple[str, ...]:
    """The extension points a plugin class implements (its own or inherited methods named as
    a point, the base class aside)."""
    hit = _POINTS_OF.get(cls)
    if hit is None:
        hit = _POINTS_OF[cls] = tuple(p for p in POINTS if callable(getattr(cls, p, None)) and not hasattr(Plugin, p))
    return hit


def check_plugin(cls: type) -> None:
    """``XpodError`` when ``cls`` is no usable plugin: no name, no extension point, a public
    method that is no extension point, or half of a two-method point."""
    name = getattr(cls, "name", "") or cls.__name__
    if not (isinstance(cls, type) and issubclass(cls, Plugin)) or not getattr(cls, "name", ""):
        raise XpodError(f"plugin {name}: not a scheduler plugin (subclass framework.Plugin and set its name)")
    public = {
        m
        for klass in cls.__mro__
        if klass not in (Plugin, object)
        for m, v in vars(klass).items()
        if not m.startswith("_") and callable(v) and not isinstance(v, type)
    }
    unknown = sorted(public - set(POINTS))
    if unknown:
        raise XpodError(
            f"plugin {name}: {unknown[0]!r} is no extension point (known: {', '.join(sorted(set(POINTS)))}); "
            "name helpers with a leading underscore"
        )
    points = points_of(cls)
    if not points:
        raise XpodError(f"plugin {name}: implements no extension point (one of {', '.join(sorted(set(POINTS)))})")
    if ("reserve" in points) != ("unreserve" in points):
        raise XpodError(f"plugin {name}: the reserve point needs both reserve and unreserve")
    if "victim_class_bound" in points and "victims" not in points:
        raise XpodError(f"plugin {name}: victim_class_bound bounds its own victims: implement victims too")
    bad = sorted(set(cls.JOB_FIELDS) - set(PLUGIN_FIELDS))
    if bad:
        raise XpodError(
            f"plugin {name}: JOB_FIELDS: {bad[0]!r} is not a job field plugins act on ({', '.join(PLUGIN_FIELDS)})"
        )


#: name -> plugin class; ``plugins/`` registers the built-in ones
PLUGINS: dict[str, type[Plugin]] = {}


def register(cls: type[Plugin]) -> type[Plugin]:
    """Class decorator: check the plugin and make its name usable in profiles."""
    check_plugin(cls)
    old = PLUGINS.get(cls.name)
    if old is not None and old is not cls:
        raise XpodError(f"plugin {cls.name}: registered twice ({old.__module__} and {cls.__module__})")
    PLUGINS[cls.name] = cls
    return cls


class JobPlugins:
    """The plugins whose per-job points run for one job (those whose ``pre_filter`` did not
    skip it), per point, in profile order."""

    __slots__ = ("filters", "selectors", "scorers", "blocks", "reservers", "permits", "fields", "status")

    def __init__(self, plugins: Sequence[Plugin], status: Status) -> None:
        def having(point: str) -> list:
            return [p for p in plugins if point in points_of(type(p))]

        self.filters: list[Filter] = having("filter")
        self.selectors: list[DeviceSelect] = having("select")
        self.scorers: list[Score] = having("score")
        self.blocks: list[DomainBlocks] = having("blocks")
        self.reservers: list[Reserve] = having("reserve")
        self.permits: list[Permit] = having("permit")
        # the PLUGIN_FIELDS some active plugin acts on
        self.fields: frozenset[str] = frozenset(f for p in plugins for f in p.JOB_FIELDS)
        self.status = status  # the first pre_filter answer that is neither SUCCESS nor SKIP


class Framework:
    """The enabled plugins of a profile, resolved per extension point once (``isinstance``
    against a runtime-checkable Protocol is slow per call). Not thread-safe."""

    def __init__(self, plugins: Iterable[Plugin]) -> None:
        self.plugins: list[Plugin] = list(plugins)
        pl = self.plugins

        def having(point: str) -> list:
            return [p for p in pl if point in points_of(type(p))]

        self.pre_filters: list[PreFilter] = having("pre_filter")
        self.node_orders: list[NodeOrder] = having("node_order")
        self.queue_order: QueueOrder | None = next(iter(having("queue_key")), None)
        self.job_order: JobOrder | None = next(iter(having("job_key")), None)
        self.priority: Priority | None = next(iter(having("effective")), None)
        self.gang: Gang | None = next(iter(having("min_tasks")), None)
        self.tier_rule: Tiers | None = next(iter(having("tiers")), None)
        self.victim_selectors: list[VictimSelect] = having("victims")
        # the selectors' class bounds, when every selector has one (else None: no shortcut)
        bounded = having("victim_class_bound")
        self.victim_bounds: list[VictimClassBound] | None = (
            bounded if self.victim_selectors and len(bounded) == len(self.victim_selectors) else None
        )
        self.observers: list[Observe] = having("observe")
        # jobs shown to the observers so far (``observe``): what they learn may change their
        # placements, so a placement kept across cycles is keyed on it (``actions.reservation``)
        self.observed = 0
        self.sessions: list[Session] = having("open_session")
        self.scale: Scale | None = next(iter(having("scale_rule")), None)
        # the plugins with per-job points, for ``for_job``
        self._per_job = [
            p
            for p in pl
            if {"filter", "select", "score", "blocks", "reserve", "permit", "pre_filter"} & set(points_of(type(p)))
        ]
        self._pre_filtering = {i for i, p in enumerate(self._per_job) if "pre_filter" in points_of(type(p))}
        self._patterns: dict[tuple[int, ...], JobPlugins] = {}
        self._jobs: dict[str, tuple[Job, JobPlugins]] = {}

    def for_job(self, job: Job) -> JobPlugins:
        """The plugins active for ``job`` (cached by job id while the job is the same value)."""
        hit = self._jobs.get(job.id)
        if hit is not None and hit[0] is job:
            return hit[1]
        out = self.resolve(job)
        self._jobs[job.id] = (job, out)
        return out

    def resolve(self, job: Job) -> JobPlugins:
        """``for_job`` without the cache (admission checks jobs that are not queued)."""
        active = []
        status: Status | None = None
        for i, p in enumerate(self._per_job):
            if i in self._pre_filtering:
                st = p.pre_filter(job)  # type: ignore[attr-defined]
                if st.code is Code.SKIP:
                    continue
                if st.code is not Code.SUCCESS and status is None:
                    status = Status(st.code, st.message or f"refused by plugin {p.name}")
            active.append(i)
        if status is not None:
            return JobPlugins([self._per_job[i] for i in active], status)
        # jobs share the plugin set of their activation pattern (built once per pattern)
        key = tuple(active)
        hit = self._patterns.get(key)
        if hit is None:
            hit = self._patterns[key] = JobPlugins([self._per_job[i] for i in active], SUCCESS)
        return hit

    def observe(self, jobs: Iterable[Job], history: bool) -> None:
        """Show every ``Observe`` plugin these jobs (submitted now, or seen before: ``history``)."""
        jobs = list(jobs)
        if not self.observers:
            return
        self.observed += len(jobs)
        for p in self.observers:
            for job in jobs:
                p.observe(job, history)

    def forget(self, job_id: str) -> None:
        """Drop a job's cached plugin set (it finished or was cancelled)."""
        self._jobs.pop(job_id, None)

    def refusal(self, job: Job) -> str | None:
        """Why ``job`` is refused at submit (one line, ``field: message``), or None: a
        ``pre_filter`` answered UNRESOLVABLE or ERROR, or the job sets a field
        (``PLUGIN_FIELDS``) that no enabled plugin acts on for it."""
        jp = self.resolve(job)
        if not jp.status.ok:
            return jp.status.message
        for field in PLUGIN_FIELDS:
            if getattr(job, field) and field not in jp.fields:
                return (
                    f"{field}: no enabled plugin acts on it for this job (the profile enables "
                    f"{', '.join(p.name for p in self.plugins) or 'none'})"
                )
        return None

    def blocks(self, job: Job, ctx: CycleContext) -> Blocks | None:
        """The first block rule's blocks for ``job``, or None (no plugin places it in blocks)."""
        for p in self.for_job(job).blocks:
            got = p.blocks(job, ctx)
            if isinstance(got, Blocks):
                return got
        return None


def build(specs: Iterable[tuple[str, dict]], factory: Callable[[str], type[Plugin]] | None = None) -> list[Plugin]:
    """Plugin instances for (name, args) pairs (a profile's ``policies``)."""
    return [(factory or PLUGINS.__getitem__)(name)(**args) for name, args in specs]
