"""The client's address/token resolution, and job files' field paths mapped to lines (for the
field a server refusal names)."""

from __future__ import annotations

import pytest

from xpod.hal.errors import XpodError
from xpod.runtime.client import DEFAULT_SERVER, resolve_target
from xpod.scheduler.jobspec import load_job_file


def test_flags_then_environment_then_config_then_default(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("server: cfg-host:1\ntoken: cfg-token\n")
    monkeypatch.setenv("XPOD_CONFIG", str(config))
    monkeypatch.delenv("XPOD_SERVER", raising=False)
    monkeypatch.delenv("XPOD_TOKEN", raising=False)
    t = resolve_target()
    assert (t.server, t.token, t.source) == ("cfg-host:1", "cfg-token", str(config))
    monkeypatch.setenv("XPOD_SERVER", "env-host:2")
    monkeypatch.setenv("XPOD_TOKEN", "env-token")
    t = resolve_target()
    assert (t.server, t.token, t.source) == ("env-host:2", "env-token", "XPOD_SERVER")
    t = resolve_target("flag-host:3", "flag-token")
    assert (t.server, t.token, t.source) == ("flag-host:3", "flag-token", "flag")
    monkeypatch.delenv("XPOD_SERVER")
    monkeypatch.delenv("XPOD_TOKEN")
    config.unlink()
    t = resolve_target()
    assert (t.server, t.token, t.source) == (DEFAULT_SERVER, None, "default")


def test_bad_config_file_is_one_line(tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("servr: x\n")
    monkeypatch.setenv("XPOD_CONFIG", str(config))
    with pytest.raises(XpodError, match="unknown key 'servr'"):
        resolve_target()


def test_field_paths_map_to_lines(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text(
        "apiVersion: xpod/v1\n"
        "kind: TrainingJob\n"
        "metadata:\n"
        "  name: x\n"
        "spec:\n"
        "  tasks: 2\n"
        "  devices:\n"
        "    count: 16\n"
        "    model: ascend-910c\n"
    )
    job = load_job_file(str(p))
    assert job.line_of("spec.devices.count") == 8
    assert job.line_of("spec.tasks") == 6
    assert job.line_of("metadata.name") == 4
    assert job.line_of("spec.nothing.here") == 5  # deepest existing key
    assert job.line_of("kind") == 2
    assert job.position("spec.devices.model") == (9, 5)
