"""The per-partition intake of the processor's agents (processors/fair_intake.py): turns, lanes,
order within a partition, pause and resume, and dropping revoked partitions."""

from __future__ import annotations

import pytest

from sluicegate.processors.fair_intake import FairIntake


def drain(intake: FairIntake) -> list[str]:
    out = []
    while (got := intake.take()) is not None:
        out.append(got[0])
    return out


@pytest.mark.parametrize(("puts", "order"), [
    pytest.param([], [], id="empty"),
    pytest.param([("a", "a1"), ("a", "a2"), ("a", "a3")], ["a1", "a2", "a3"], id="one-partition-in-order"),
    pytest.param([("m", "m1"), ("m", "m2"), ("m", "m3"), ("q", "q1")], ["m1", "q1", "m2", "m3"],
                 id="quiet-record-waits-for-one-flood-record"),
    pytest.param([("m", "m1"), ("m", "m2"), ("q", "q1"), ("r", "r1"), ("q", "q2")],
                 ["m1", "q1", "r1", "m2", "q2"], id="three-partitions-take-turns"),
    pytest.param([("q", "q1"), ("m", "m1"), ("m", "m2")], ["q1", "m1", "m2"], id="first-come-first-turn"),
])
def test_partitions_take_turns_and_keep_their_order(puts: list[tuple[str, str]], order: list[str]) -> None:
    intake: FairIntake[str, str] = FairIntake(cap=100)
    for p, r in puts:
        intake.put(p, r)
    assert len(intake) == len(puts)
    assert drain(intake) == order
    assert len(intake) == 0 and intake.take() is None


def test_a_record_put_while_others_are_taken_joins_the_turns_at_the_end() -> None:
    intake: FairIntake[str, str] = FairIntake(cap=100)
    for r in ("m1", "m2", "m3"):
        intake.put("m", r)
    assert intake.take() == ("m1", None)
    intake.put("q", "q1")
    assert drain(intake) == ["m2", "q1", "m3"]


@pytest.mark.parametrize(("cap", "puts_before_pause"), [
    pytest.param(2, 2, id="cap-2"),
    pytest.param(4, 4, id="cap-4"),
    pytest.param(256, 256, id="default-size"),
])
def test_a_partition_pauses_at_the_cap_and_resumes_at_half(cap: int, puts_before_pause: int) -> None:
    intake: FairIntake[str, int] = FairIntake(cap=cap)
    asked = [intake.put("m", i) for i in range(puts_before_pause)]
    assert asked == [None] * (puts_before_pause - 1) + ["m"]
    assert intake.put("m", -1) == "m"  # asked again while over the cap (faust may have resumed it)
    resumes = []
    while (got := intake.take()) is not None:
        resumes.append(got[1])
    # resumed exactly once, by the take that left cap // 2 records queued
    assert resumes.count("m") == 1
    assert resumes.index("m") == (puts_before_pause + 1) - cap // 2 - 1


def test_other_partitions_are_not_paused_by_a_flood() -> None:
    intake: FairIntake[str, int] = FairIntake(cap=3)
    assert [intake.put("m", i) for i in range(3)] == [None, None, "m"]
    assert intake.put("q", 0) is None and intake.paused == {"m"}


def test_dropping_revoked_partitions_forgets_their_records_and_pauses() -> None:
    intake: FairIntake[str, str] = FairIntake(cap=2)
    intake.put("m", "m1")
    intake.put("m", "m2")  # paused
    intake.put("q", "q1")
    intake.put("r", "r1")
    assert intake.drop({"m", "r"}) == 3
    assert intake.paused == set() and drain(intake) == ["q1"]
    assert intake.drop({"x"}) == 0


@pytest.mark.parametrize("cap", [0, 1, -5])
def test_a_cap_below_2_is_refused(cap: int) -> None:
    with pytest.raises(ValueError, match="cap must be at least 2"):
        FairIntake(cap=cap)


# -- lanes: results of started runs go ahead of new work within a partition -------------------

@pytest.mark.parametrize(("puts", "order"), [
    pytest.param([("m", "t1", False), ("m", "t2", False), ("m", "o1", True)], ["o1", "t1", "t2"],
                 id="an-outcome-passes-queued-triggers"),
    pytest.param([("m", "o1", True), ("m", "t1", False), ("m", "o2", True)], ["o1", "o2", "t1"],
                 id="outcomes-keep-their-order"),
    pytest.param([("m", "t1", False), ("q", "t9", False), ("m", "o1", True)], ["o1", "t9", "t1"],
                 id="lanes-do-not-change-the-turns-of-partitions"),
    pytest.param([("m", "t1", False), ("m", "t2", False)], ["t1", "t2"], id="new-work-alone-in-order"),
])
def test_first_records_go_ahead_within_their_partition(puts: list[tuple[str, str, bool]], order: list[str]) -> None:
    intake: FairIntake[str, str] = FairIntake(cap=100)
    for p, r, first in puts:
        intake.put(p, r, first)
    assert drain(intake) == order


def test_the_cap_counts_both_lanes() -> None:
    intake: FairIntake[str, str] = FairIntake(cap=3)
    assert intake.put("m", "t1") is None and intake.put("m", "o1", first=True) is None
    assert intake.put("m", "t2") == "m"
    assert [intake.take() for _ in range(3)] == [("o1", None), ("t1", "m"), ("t2", None)]


def _record(value: bytes) -> object:
    class _Event:  # what classify_command reads of a faust event
        pass
    ev = _Event()
    ev.value = value  # type: ignore[attr-defined]
    return ev


@pytest.mark.parametrize(("command", "first"), [
    pytest.param({"kind": "outcome", "app_id": "a", "function_id": "f", "run_id": "r", "job_id": "r.0", "attempt": 0,
                  "op": "run_ok", "started_at": 1, "ended_at": 2}, True, id="outcome"),
    pytest.param({"kind": "heartbeat", "app_id": "a", "function_id": "f", "run_id": "r", "lease_id": "l"}, True,
                 id="heartbeat"),
    pytest.param({"kind": "dispatch_tick", "at_ms": 1}, True, id="dispatch-tick"),
    pytest.param({"kind": "timer", "app_id": "a", "function_id": "f", "run_id": "r", "timer_id": "r.0:1"}, True,
                 id="run-timer"),
    pytest.param({"kind": "timer", "app_id": "a", "function_id": "f", "run_id": "", "timer_id": "deb",
                  "flow_key": "deb/a/f/k"}, False, id="debounce-timer-stays-in-order"),
    pytest.param({"kind": "cancel", "app_id": "a", "function_id": "f", "run_id": "r", "reason": "x"}, True,
                 id="cancel"),
    pytest.param({"kind": "replay_mark", "replay_id": "x", "seq": 1}, False, id="replay-mark-after-its-triggers"),
    pytest.param({"kind": "cron_sync", "app_id": "a", "function_id": "f", "cron": "* * * * *"}, False, id="cron-sync"),
])
def test_commands_about_started_runs_go_first(command: dict, first: bool) -> None:
    import json

    from sluicegate.processors.faust_app import classify_command

    cmd, got = classify_command(_record(json.dumps(command).encode()))  # type: ignore[arg-type]
    assert cmd is not None and cmd.kind == command["kind"] and got is first


def test_everything_read_from_the_results_topic_goes_first() -> None:
    import json
    from types import SimpleNamespace

    from sluicegate.processors.faust_app import classify_command

    trig = json.dumps({"kind": "cron_sync", "app_id": "a", "function_id": "f", "cron": "* * * * *"}).encode()
    for topic, first in (("sg.results", True), ("sg.commands", False)):
        event = SimpleNamespace(value=trig, message=SimpleNamespace(topic=topic))
        cmd, got = classify_command(event, "sg.results")  # type: ignore[arg-type]
        assert cmd is not None and got is first
    bad = SimpleNamespace(value=b"{", message=SimpleNamespace(topic="sg.results"))
    assert classify_command(bad, "sg.results") == (None, True)  # type: ignore[arg-type]


def test_an_undecodable_command_is_passed_on_as_none_in_the_new_work_lane() -> None:
    from sluicegate.processors.faust_app import classify_command

    assert classify_command(_record(b"not json")) == (None, False)  # type: ignore[arg-type]
