"""The per-partition intake of the processor's agents (processors/fair_intake.py): turns, lanes,
order within a partition, pause and resume, and clearing at a rebalance."""

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
    assert len(intake) == len(puts) and bool(intake) == bool(puts)
    assert drain(intake) == order
    assert len(intake) == 0 and not intake and intake.take() is None


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


def test_clearing_forgets_every_record_and_pause_and_starts_afresh() -> None:
    intake: FairIntake[str, str] = FairIntake(cap=2)
    intake.put("m", "m1")
    assert intake.put("m", "m2") == "m"  # paused
    intake.put("q", "q1")
    assert intake.clear() == 3
    assert intake.paused == set() and len(intake) == 0 and intake.take() is None
    assert intake.clear() == 0
    intake.put("m", "m3")  # read again after the rebalance: a fresh queue, not paused
    assert intake.paused == set() and drain(intake) == ["m3"]


@pytest.mark.parametrize("cap", [0, 1, -5])
def test_a_cap_below_2_is_refused(cap: int) -> None:
    with pytest.raises(ValueError, match="cap must be at least 2"):
        FairIntake(cap=cap)


# -- lanes within a partition: results take every other turn, lanes of new work take turns --

@pytest.mark.parametrize(("puts", "order"), [
    pytest.param([("m", "t1", ""), ("m", "t2", ""), ("m", "o1", None)], ["o1", "t1", "t2"],
                 id="an-outcome-passes-queued-triggers"),
    pytest.param([("m", "o1", None), ("m", "o2", None), ("m", "o3", None), ("m", "t1", ""), ("m", "t2", "")],
                 ["o1", "t1", "o2", "t2", "o3"], id="results-and-new-work-alternate"),
    pytest.param([("m", "o1", None), ("m", "o2", None)], ["o1", "o2"], id="results-alone-in-order"),
    pytest.param([("m", "t1", ""), ("q", "t9", ""), ("m", "o1", None)], ["o1", "t9", "t1"],
                 id="lanes-do-not-change-the-turns-of-partitions"),
    pytest.param([("m", "a1", "otto"), ("m", "a2", "otto"), ("m", "a3", "otto"), ("m", "b1", "anna")],
                 ["a1", "b1", "a2", "a3"], id="one-keys-burst-does-not-hold-back-another-key"),
    pytest.param([("m", "a1", "otto"), ("m", "b1", "anna"), ("m", "a2", "otto"), ("m", "b2", "anna")],
                 ["a1", "b1", "a2", "b2"], id="each-lane-keeps-its-order"),
    pytest.param([("m", "t1", ""), ("m", "t2", "")], ["t1", "t2"], id="one-lane-of-new-work-in-order"),
])
def test_lanes_within_a_partition(puts: list[tuple[str, str, object]], order: list[str]) -> None:
    intake: FairIntake[str, str] = FairIntake(cap=100)
    for p, r, lane in puts:
        intake.put(p, r, lane)
    assert drain(intake) == order


BG = ("replay", "rp1")


@pytest.mark.parametrize(("puts", "order"), [
    pytest.param([("m", "r1", BG), ("m", "r2", BG), ("m", "t1", "live")], ["t1", "r1", "r2"],
                 id="live-trigger-passes-a-queued-replay-chunk"),
    pytest.param([("m", "r1", BG), ("m", "o1", None), ("m", "o2", None), ("m", "t1", "live")],
                 ["o1", "t1", "o2", "r1"], id="results-still-alternate-with-live-work"),
    pytest.param([("m", "r1", BG), ("m", "r2", BG), ("m", "o1", None), ("m", "o2", None)],
                 ["o1", "r1", "o2", "r2"], id="with-no-live-work-a-replay-alternates-with-results"),
    pytest.param([("m", "r1", BG), ("m", "s1", ("replay", "rp2")), ("m", "r2", BG)], ["r1", "s1", "r2"],
                 id="background-lanes-take-turns-among-themselves"),
    pytest.param([("m", "r1", BG), ("q", "t9", "live")], ["r1", "t9"],
                 id="background-is-within-a-partition-not-across"),
])
def test_background_lanes_wait_for_the_other_lanes_of_new_work(puts: list[tuple[str, str, object]],
                                                               order: list[str]) -> None:
    from sluicegate.processors.intake_lanes import is_background

    intake: FairIntake[str, str] = FairIntake(cap=100, background=is_background)
    for p, r, lane in puts:
        intake.put(p, r, lane)
    assert drain(intake) == order


def test_a_live_trigger_put_while_a_replay_chunk_is_taken_goes_next() -> None:
    from sluicegate.processors.intake_lanes import is_background

    intake: FairIntake[str, str] = FairIntake(cap=100, background=is_background)
    for r in ("r1", "r2", "r3"):
        intake.put("m", r, BG)
    assert intake.take() == ("r1", None)
    intake.put("m", "t1", ("key", "a", "f", ""))
    assert drain(intake) == ["t1", "r2", "r3"]


@pytest.mark.parametrize(("lane", "background"), [
    (("replay", "rp1"), True), (("key", "a", "f", ""), False), (("fn", "a", "f"), False), (("control",), False),
    (None, False), ("", False), ("replay", False),
])
def test_only_a_replays_lane_is_background(lane: object, background: bool) -> None:
    from sluicegate.processors.intake_lanes import is_background

    assert is_background(lane) is background  # type: ignore[arg-type]


def test_the_cap_counts_every_lane() -> None:
    intake: FairIntake[str, str] = FairIntake(cap=3)
    assert intake.put("m", "t1") is None and intake.put("m", "o1", None) is None
    assert intake.put("m", "b1", "other") == "m"
    assert [intake.take() for _ in range(3)] == [("o1", None), ("t1", "m"), ("b1", None)]
    assert len(intake) == 0


# -- which lane a command goes to (processors/intake_lanes.py) -------------------------------

FN = {"app_id": "a", "function_id": "f", "name": "f", "triggers": [], "retries": 0}
EV = {"app_id": "a", "id": "e1", "name": "go", "ts": 0, "received_at": 0, "data": {"user": "otto"}}


def _trigger(flow: dict | None = None, **extra: object) -> dict:
    return {"kind": "trigger", "app_id": "a", "function_id": "f", "run_id": "r",
            "function": {**FN, "flow": flow}, "events": [EV], **extra}


def _record(value: bytes, topic: str = "sg.commands") -> object:
    from types import SimpleNamespace

    return SimpleNamespace(value=value, message=SimpleNamespace(topic=topic))


@pytest.mark.parametrize(("command", "lane"), [
    pytest.param({"kind": "outcome", "app_id": "a", "function_id": "f", "run_id": "r", "job_id": "r.0", "attempt": 0,
                  "op": "run_ok", "started_at": 1, "ended_at": 2}, None, id="outcome"),
    pytest.param({"kind": "heartbeat", "app_id": "a", "function_id": "f", "run_id": "r", "lease_id": "l"}, None,
                 id="heartbeat"),
    pytest.param({"kind": "dispatch_tick", "at_ms": 1}, None, id="dispatch-tick"),
    pytest.param({"kind": "timer", "app_id": "a", "function_id": "f", "run_id": "r", "timer_id": "r.0:1"}, None,
                 id="run-timer"),
    pytest.param({"kind": "cancel", "app_id": "a", "function_id": "f", "run_id": "r", "reason": "x"}, None,
                 id="cancel-one-run"),
    pytest.param(_trigger(), ("key", "a", "f", ""), id="trigger-no-flow-control"),
    pytest.param(_trigger({"concurrency": [{"limit": 5, "key": "event.data.user"}]}), ("key", "a", "f", "otto"),
                 id="trigger-per-concurrency-key"),
    pytest.param(_trigger({"debounce": {"period_ms": 1000}}), ("fn", "a", "f"), id="debounced-trigger-in-order"),
    pytest.param(_trigger({"idempotency": "event.data.user"}), ("fn", "a", "f"), id="idempotent-trigger-in-order"),
    pytest.param(_trigger(replay_id="rp1"), ("replay", "rp1"), id="replayed-trigger"),
    pytest.param({"kind": "replay_mark", "replay_id": "rp1", "seq": 1}, ("replay", "rp1"),
                 id="replay-mark-after-its-triggers"),
    pytest.param({"kind": "timer", "app_id": "a", "function_id": "f", "run_id": "", "timer_id": "deb",
                  "flow_key": "deb/a/f/k"}, ("fn", "a", "f"), id="debounce-timer-in-order-with-triggers"),
    pytest.param({"kind": "cron_sync", "app_id": "a", "function_id": "f", "cron": "* * * * *"}, ("fn", "a", "f"),
                 id="cron-sync"),
    pytest.param({"kind": "cancel_many", "app_id": "a", "function_id": "f", "cancellation_id": "c",
                  "started_before": 5}, ("control",), id="bulk-cancellation"),
])
def test_each_command_goes_to_its_lane(command: dict, lane: object) -> None:
    import json

    from sluicegate.processors.faust_app import classify_command

    cmd, got = classify_command(_record(json.dumps(command).encode()), "sg.results")  # type: ignore[arg-type]
    assert cmd is not None and cmd.kind == command["kind"] and got == lane


def test_everything_read_from_the_results_topic_is_a_result() -> None:
    import json

    from sluicegate.processors.faust_app import classify_command

    trig = json.dumps(_trigger()).encode()
    assert classify_command(_record(trig, "sg.results"), "sg.results")[1] is None  # type: ignore[arg-type]
    assert classify_command(_record(trig), "sg.results")[1] == ("key", "a", "f", "")  # type: ignore[arg-type]
    assert classify_command(_record(b"{", "sg.results"), "sg.results") == (None, None)  # type: ignore[arg-type]


def test_an_undecodable_command_is_passed_on_as_none_in_the_control_lane() -> None:
    from sluicegate.processors.faust_app import classify_command

    assert classify_command(_record(b"not json"), "sg.results") == (None, ("control",))  # type: ignore[arg-type]
