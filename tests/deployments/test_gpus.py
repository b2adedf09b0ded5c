from __future__ import annotations

import itertools

from inference.orchestrator.gpus import gpus_discover, gpus_pack


def test_replicas_get_distinct_lowest_free_gpus():
    packing = gpus_pack(gpus=[0, 1, 2, 3], in_use=[[1]], wanted={"a": 2, "b": 1})
    assert packing.assigned == {"a": [0, 2], "b": [3]}
    assert packing.unplaced == {}


def test_not_enough_gpus_says_how_many_were_needed_and_free():
    packing = gpus_pack(gpus=[0, 1, 2, 3], in_use=[[0, 1], [2]], wanted={"big": 2})
    assert packing.assigned == {}
    assert packing.unplaced == {"big": "needs 2 GPUs, 1 of 4 free"}


def test_a_later_smaller_replica_may_still_fit():
    packing = gpus_pack(gpus=[0, 1], in_use=[], wanted={"big": 4, "small": 1})
    assert packing.unplaced == {"big": "needs 4 GPUs, 2 of 2 free"}
    assert packing.assigned == {"small": [0]}


def test_zero_gpu_replicas_take_nothing():
    packing = gpus_pack(gpus=[], in_use=[], wanted={"cpu": 0})
    assert packing.assigned == {"cpu": []}


def test_no_gpu_is_ever_given_twice():
    # Every mix of holdings and requests on an 8-GPU host.
    for held_count, sizes in itertools.product(range(9), [(1, 1, 1), (2, 4), (3, 3, 3), (8,)]):
        held = [list(range(held_count))]
        wanted = {f"r{i}": n for i, n in enumerate(sizes)}
        packing = gpus_pack(gpus=range(8), in_use=held, wanted=wanted)
        given = [g for gpus in packing.assigned.values() for g in gpus]
        assert len(given) == len(set(given))
        assert not set(given) & set(held[0])
        assert all(len(packing.assigned[k]) == wanted[k] for k in packing.assigned)
        assert set(packing.assigned) | set(packing.unplaced) == set(wanted)


def test_discovery_finds_nothing_without_nvml_or_a_driver():
    # This machine has no NVIDIA driver: discovery must say so with an empty list, not fail.
    assert isinstance(gpus_discover(), list)
