"""``processors.flow.singleton``: the lock of one (function, key), driven by hand.

``H`` holds the lock, ``W`` waits behind it, ``N`` is a newcomer, ``X`` a run the lock does
not know.
"""

from __future__ import annotations

import pytest

from sluicegate.flow_config import Singleton
from sluicegate.processors.flow.singleton import (
    CancelRun,
    RunArrives,
    RunEnds,
    SingletonDecision,
    SingletonState,
    Skip,
    Start,
    Wait,
    decide,
    singleton_key,
)

SKIP, CANCEL, QUEUE = Singleton(mode="skip"), Singleton(mode="cancel"), Singleton(mode="queue")
MODES = {"skip": SKIP, "cancel": CANCEL, "queue": QUEUE}
HELD = SingletonState(running_run_id="H")
HELD_W = SingletonState(running_run_id="H", waiting_run_id="W")

D = SingletonDecision
CASES = [
    # arrivals
    ("free lock: start", None, RunArrives("N"), "skip", D(SingletonState(running_run_id="N"), (Start("N"),), True)),
    ("free lock: start (cancel)", None, RunArrives("N"), "cancel",
     D(SingletonState(running_run_id="N"), (Start("N"),), True)),
    ("free lock: start (queue)", None, RunArrives("N"), "queue",
     D(SingletonState(running_run_id="N"), (Start("N"),), True)),
    ("skip: newcomer skipped, holder kept", HELD, RunArrives("N"), "skip",
     D(HELD, (Skip("N", "singleton_skipped", "H"),))),
    ("skip: a waiting run (from a queue config) stays", HELD_W, RunArrives("N"), "skip",
     D(HELD_W, (Skip("N", "singleton_skipped", "H"),))),
    ("cancel: holder cancelled, newcomer holds and starts", HELD, RunArrives("N"), "cancel",
     D(SingletonState(running_run_id="N"), (CancelRun("H", "N"), Start("N")), True)),
    ("cancel: a waiting run (from a queue config) is replaced too", HELD_W, RunArrives("N"), "cancel",
     D(SingletonState(running_run_id="N"),
       (Skip("W", "singleton_replaced", "N"), CancelRun("H", "N"), Start("N")), True)),
    ("queue: newcomer waits", HELD, RunArrives("N"), "queue",
     D(SingletonState(running_run_id="H", waiting_run_id="N"), (Wait("N", "H"),), True)),
    ("queue: newcomer replaces the waiting run", HELD_W, RunArrives("N"), "queue",
     D(SingletonState(running_run_id="H", waiting_run_id="N"),
       (Skip("W", "singleton_replaced", "N"), Wait("N", "H")), True)),
    # duplicate arrivals (at-least-once inputs) change nothing in any mode
    *[(f"{mode}: duplicate arrival of the {who}", HELD_W, RunArrives(run), mode, D(HELD_W, note="duplicate arrival"))
      for mode in MODES for who, run in (("holder", "H"), ("waiting run", "W"))],
    ("cancel: duplicate arrival of the holder does not cancel it", HELD, RunArrives("H"), "cancel",
     D(HELD, note="duplicate arrival")),
    # ends
    *[(f"{mode}: holder ends, nobody waits: delete", HELD, RunEnds("H"), mode, D(None, changed=True))
      for mode in MODES],
    *[(f"{mode}: holder ends, the waiting run starts", HELD_W, RunEnds("H"), mode,
       D(SingletonState(running_run_id="W"), (Start("W"),), True)) for mode in MODES],
    ("waiting run ends (cancelled while waiting): cleared", HELD_W, RunEnds("W"), "queue",
     D(HELD, changed=True)),
    ("unknown run ends: no change", HELD_W, RunEnds("X"), "queue", D(HELD_W, note="not the holder")),
    ("unknown run ends, holder alone: no change", HELD, RunEnds("X"), "cancel", D(HELD, note="not the holder")),
    ("a run ends with no lock: nothing", None, RunEnds("X"), "skip", D(None, note="no lock")),
]


@pytest.mark.parametrize(("state", "event", "mode", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(state: SingletonState | None, event: RunArrives | RunEnds, mode: str,
                        expected: SingletonDecision) -> None:
    decision = decide(state, event, config=MODES[mode])
    assert decision == expected
    if not decision.changed:
        assert decision.state is state


def drive(mode: str, inputs: list[RunArrives | RunEnds]) -> tuple[list[tuple[object, ...]], SingletonState | None]:
    state: SingletonState | None = None
    actions: list[tuple[object, ...]] = []
    for event in inputs:
        decision = decide(state, event, config=MODES[mode])
        actions.append(decision.actions)
        state = decision.state
    return actions, state


SCENARIOS = [
    # The race: B cancels A and starts; A's RunEnds comes later and must not free B's lock.
    ("cancel: the cancelled run's late end keeps the new holder's lock", "cancel",
     [RunArrives("A"), RunArrives("B"), RunEnds("A"), RunArrives("C")],
     [(Start("A"),), (CancelRun("A", "B"), Start("B")), (), (CancelRun("B", "C"), Start("C"))],
     SingletonState(running_run_id="C")),
    ("cancel: burst — each arrival cancels the holder, the last keeps running", "cancel",
     [RunArrives("A"), RunArrives("B"), RunArrives("C"), RunEnds("A"), RunEnds("B")],
     [(Start("A"),), (CancelRun("A", "B"), Start("B")), (CancelRun("B", "C"), Start("C")), (), ()],
     SingletonState(running_run_id="C")),
    ("skip: while A runs B is skipped; after A ends C starts", "skip",
     [RunArrives("A"), RunArrives("B"), RunEnds("B"), RunEnds("A"), RunArrives("C")],
     [(Start("A"),), (Skip("B", "singleton_skipped", "A"),), (), (), (Start("C"),)],
     SingletonState(running_run_id="C")),
    ("queue: one waits, a later one replaces it, it starts when the holder ends", "queue",
     [RunArrives("A"), RunArrives("B"), RunArrives("C"), RunEnds("A"), RunEnds("C")],
     [(Start("A"),), (Wait("B", "A"),), (Skip("B", "singleton_replaced", "C"), Wait("C", "A")), (Start("C"),), ()],
     None),
    ("queue: a redelivered end of the old holder after the promotion changes nothing", "queue",
     [RunArrives("A"), RunArrives("B"), RunEnds("A"), RunEnds("A"), RunArrives("C")],
     [(Start("A"),), (Wait("B", "A"),), (Start("B"),), (), (Wait("C", "B"),)],
     SingletonState(running_run_id="B", waiting_run_id="C")),
    ("queue: redelivered arrivals of holder and waiting run change nothing", "queue",
     [RunArrives("A"), RunArrives("B"), RunArrives("A"), RunArrives("B")],
     [(Start("A"),), (Wait("B", "A"),), (), ()],
     SingletonState(running_run_id="A", waiting_run_id="B")),
]


@pytest.mark.parametrize(("mode", "inputs", "actions", "final"), [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_scenarios(mode: str, inputs: list[RunArrives | RunEnds], actions: list[tuple[object, ...]],
                   final: SingletonState | None) -> None:
    assert drive(mode, inputs) == (actions, final)


def test_actions_carry_a_stable_kind() -> None:
    assert [a.kind for a in (Start("A"), Wait("A", "B"), Skip("A", "singleton_skipped", "B"), CancelRun("A", "B"))] \
        == ["start", "wait", "skip", "cancel_run"]


@pytest.mark.parametrize("state", [HELD, HELD_W])
@pytest.mark.parametrize("event", [RunArrives("N"), RunArrives("H"), RunEnds("H"), RunEnds("W"), RunEnds("X")])
@pytest.mark.parametrize("mode", list(MODES))
def test_decide_never_mutates_the_state_passed_in(state: SingletonState, event: RunArrives | RunEnds,
                                                  mode: str) -> None:
    before = state.model_dump()
    decide(state, event, config=MODES[mode])
    assert state.model_dump() == before
    with pytest.raises(Exception):
        state.running_run_id = "Z"  # type: ignore[misc]  # frozen


def test_state_is_json_and_holder_differs_from_waiting() -> None:
    assert HELD_W.model_dump_json() == '{"running_run_id":"H","waiting_run_id":"W"}'
    assert SingletonState.model_validate_json('{"running_run_id":"H"}') == HELD
    with pytest.raises(ValueError, match="waiting_run_id"):
        SingletonState(running_run_id="H", waiting_run_id="H")


@pytest.mark.parametrize(("function_key", "key_value", "expected"), [
    ("shop/welcome", None, "singleton/shop/welcome/"),
    ("shop/welcome", "false", None),  # not a singleton
    ("shop/welcome", "true", "singleton/shop/welcome/5ffe533b830f08a0326348a9160afafc8ada44db"),
    ("shop/welcome", "user-1", "singleton/shop/welcome/9dfffe450852c20c8876f6e5a37da6e469bf2c9c"),
    ("shop/welcome", "", "singleton/shop/welcome/da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ("shop/welcome", "日本", "singleton/shop/welcome/44da6bbcf285cdb317aa91174217990d1b94d64d"),
])
def test_singleton_key_layout(function_key: str, key_value: str | None, expected: str | None) -> None:
    assert singleton_key(function_key, key_value) == expected
