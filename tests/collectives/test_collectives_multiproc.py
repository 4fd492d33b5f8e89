"""Multi-process collectives on CPU/gloo: every op against a single-process reference for world
sizes 1, 2, 3, 4 and 8 (4 and 8 with a simulated 2-tier topology, so hierarchical results are
compared with the reference too), the shared-memory all_reduce across many chunks, a rank that
arrives later than the collective timeout, and a peer that dies or hangs."""

import pytest

from collectives_checks import all_ops, failing_peer, late_rank, out_buffers, shm_chunks, shm_symmetric
from collectives_harness import run_ranks


def _ok(results, n):
    assert sorted(results) == list(range(n)), f"only ranks {sorted(results)} reported"
    problems = []
    for rank, (status, value) in sorted(results.items()):
        if status != "ok":
            problems.append(f"rank {rank} raised: {value}")
        else:
            problems.extend(value)
    assert not problems, "\n".join(problems[:30])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_every_op_matches_reference(n):
    _ok(run_ranks(all_ops, n, timeout_s=150), n)


def test_shm_symmetric_buffers():
    _ok(run_ranks(shm_symmetric, 3, timeout_s=90), 3)


def test_out_buffers():
    _ok(run_ranks(out_buffers, 2, timeout_s=90), 2)


def test_shm_all_reduce_many_chunks():
    _ok(run_ranks(shm_chunks, 3, timeout_s=90), 3)


def test_a_rank_later_than_the_collective_timeout_still_joins():
    _ok(run_ranks(late_rank, 3, timeout_s=90), 3)


@pytest.mark.parametrize("mode", ["die", "hang"])
def test_failed_peer_ends_in_bounded_error(mode):
    n = 3
    results = run_ranks(failing_peer, n, mode, timeout_s=60, expect=n - 1)
    for rank in range(n - 1):
        assert rank in results, f"rank {rank} hung instead of failing"
        status, by_algorithm = results[rank]
        assert status == "ok", by_algorithm
        for algorithm in ("flat", "shm"):
            value = by_algorithm[algorithm]
            assert value["error"] is not None, f"rank {rank}: {algorithm} all_reduce succeeded without its peer"
            assert value["xpod"], value
            assert "\n" not in value["message"]
            assert f"rank {rank}" in value["message"], value["message"]
            assert "pair.cc" not in value["message"] and "GLHF" not in value["message"], value["message"]
            # timeout is 2 s; a dead peer is seen sooner, a hung one at the timeout
            assert value["seconds"] < 2 + 6, value
            if mode == "hang":
                assert value["error"] == "CollectiveTimeout", value
            if mode == "die" and algorithm == "shm":
                assert "rank 2 (pid" in value["message"] and value["seconds"] < 2, value
