"""Slots of a multi-slot (simulated) worker heartbeat under their own names; probes still find them."""

from __future__ import annotations

from worker.names import default_worker_name, is_default_name_of_host, is_name_or_slot_of, slot_name
from worker.probe import matching


def test_slot_names_are_found_by_the_probe() -> None:
    base = default_worker_name("simulated", host="box")
    slots = [slot_name(base, i) for i in range(3)]
    assert all(is_default_name_of_host(name, "box") for name in slots)
    assert matching([*slots, "other-cuda:0-000000"], None, "box") == slots
    assert matching(slots, base, "elsewhere") == slots
    assert is_name_or_slot_of(base, base) and not is_name_or_slot_of(f"{base}-slotx", base)
    assert not is_name_or_slot_of(slot_name("box-simulated-abcdef0", 1), base)
