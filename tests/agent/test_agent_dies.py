"""Die-scheduled packages (Ascend 910C) on a real agent: one scheduler device per die, the same
numbering in the scheduler's inventory and in the agent's device exporter, each die's own
visible-devices id; and the simulated flag on devices (ListDevices), not only on nodes."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from agent_harness import cluster, free_port, wait_until  # noqa: F401 (cluster is a fixture)
from xpod.runtime.agent import agent as ag


def test_discovery_splits_a_910c_package_into_dies_with_their_own_visible_ids():
    everything = ag.discover_devices("ascend-910c:2,mthreads-s4000:1")
    devices = [d for d in everything if d.simulated]  # this host's real devices come first
    first = devices[0].index
    assert [(d.index - first, d.model, d.local_index, d.die) for d in devices] == [
        (0, "ascend-910c", 0, 0),
        (1, "ascend-910c", 0, 1),
        (2, "ascend-910c", 1, 0),
        (3, "ascend-910c", 1, 1),
        (4, "mthreads-s4000", 2, None),
    ]
    assert [d.index for d in everything] == list(range(len(everything)))
    assert {d.memory_total_bytes for d in devices[:4]} == {64 * 2**30}  # half of a 128 GiB package each
    sim = devices[0].backend
    # one die alone: only its id; both dies of package 1: both; a whole one-die package: its index
    assert ag._visible_env(sim, [devices[2]]) == {"XPOD_SIM_VISIBLE_DEVICES": "2"}
    assert ag._visible_env(sim, [devices[3], devices[2]]) == {"XPOD_SIM_VISIBLE_DEVICES": "2,3"}
    assert ag._visible_env(sim, [devices[4]]) == {"XPOD_SIM_VISIBLE_DEVICES": "2"}  # the backend's own index 2


def test_agent_registers_dies_and_its_exporter_numbers_them_alike(cluster):
    cluster.start_server()
    metrics = f"127.0.0.1:{free_port()}"
    cluster.start_agent("n1", "--sim-devices", "ascend-910c:2", "--metrics", metrics)
    listed = {d.index: d for d in cluster.client.list_devices("n1")}
    npus = sorted(i for i, d in listed.items() if d.model == "ascend-910c")
    assert len(npus) == 4 and all(listed[i].memory_total_bytes == 64 * 2**30 for i in npus)
    # the simulated flag travels with each device (ListDevices), real ones stay false
    assert all(listed[i].simulated for i in npus)
    assert all(not d.simulated for d in listed.values() if d.model != "ascend-910c")
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5) as r:
        text = r.read().decode()
    info = [s.labels for f in text_string_to_metric_families(text) if f.name == "xpod_device_info" for s in f.samples]
    exported = {int(s["device"]): s for s in info}
    # the exporter's device label is the scheduler's index, package by package
    assert sorted(exported) == sorted(listed)
    assert sorted(i for i, s in exported.items() if s["model"] == "ascend-910c") == npus
    packages = [exported[i]["package"] for i in npus]
    assert packages[0] == packages[1] != packages[2] == packages[3]
    assert all(exported[i]["simulated"] == "true" for i in npus)
