"""The wrk scripts of ``make bench-api``: pollers wait a jittered interval, so they never poll in lockstep."""

from __future__ import annotations

from bench.http_load import lua_script


def test_pollers_wait_between_0_8_and_1_2_times_their_interval() -> None:
    script = lua_script(headers={"Authorization": "Key k"}, paths=["/a", "/b"], delay_ms=100)
    assert "delay = function() return math.random(80, 120) end" in script
    assert lua_script(headers={}, delay_ms=0).count("delay") == 0
