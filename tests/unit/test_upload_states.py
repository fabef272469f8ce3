"""The upload states, their transition table and the steps (pictofs.core.upload.states)."""

from __future__ import annotations

import itertools
import json
import re

import pytest

from pictofs.core.upload import journal
from pictofs.core.upload.states import (
    INITIAL, TRANSITIONS, IllegalTransition, JobState, Step, allowed, check_transition,
)

S = JobState

# Every transition the upload code makes, with who makes it.
MADE = [
    (S.STAGED, S.QUEUED, "a retry, an interrupted run, resume of a flushed entry"),
    (S.STAGED, S.UPLOADING, "a run records its first step"),
    (S.STAGED, S.FAILED, "the local checks of a run fail"),
    (S.STAGED, S.DONE, "a replace with the bytes the image already has"),
    (S.QUEUED, S.STAGED, "hold; an interrupted run whose file was reopened"),
    (S.QUEUED, S.UPLOADING, "a run records its first step"),
    (S.QUEUED, S.FAILED, "a run fails for good"),
    (S.QUEUED, S.DONE, "a replace with the same bytes, resumed"),
    (S.UPLOADING, S.STAGED, "an interrupted run whose file was reopened"),
    (S.UPLOADING, S.QUEUED, "a retry, an interrupted run, resume"),
    (S.UPLOADING, S.FAILED, "a run fails for good"),
    (S.UPLOADING, S.DONE, "registered"),
    (S.FAILED, S.STAGED, "a flush of new bytes (record_flushed)"),
    (S.FAILED, S.QUEUED, "a retarget; resume or a retry of a cancel to finish"),
    (S.DONE, S.QUEUED, "resume or a retry of a cancel to finish (its image is archived)"),
]

REFUSED = [
    (S.FAILED, S.UPLOADING),  # a failed entry is staged or queued again first
    (S.FAILED, S.DONE),
    (S.DONE, S.STAGED),  # a registered entry is never written again: a replace is new
    (S.DONE, S.UPLOADING),
    (S.DONE, S.FAILED),
]


@pytest.mark.parametrize("old, new, who", MADE)
def test_every_transition_the_code_makes_is_allowed(old: JobState, new: JobState,
                                                    who: str) -> None:
    assert allowed(old, new)
    check_transition(old, new)
    check_transition(old.value, new.value)  # as read from the journal


@pytest.mark.parametrize("old, new", REFUSED)
def test_other_transitions_are_refused(old: JobState, new: JobState) -> None:
    assert not allowed(old, new)
    with pytest.raises(IllegalTransition, match=f"'{old.value}' may not become '{new.value}'"):
        check_transition(old, new)


def test_the_table_is_exactly_what_the_code_makes() -> None:
    made = {(old, new) for old, new, _ in MADE}
    table = {(old, new) for old, nexts in TRANSITIONS.items() for new in nexts}
    assert table == made
    pairs = {(a, b) for a, b in itertools.product(JobState, repeat=2) if a != b}
    assert pairs - made == set(REFUSED)


@pytest.mark.parametrize("state", list(JobState))
def test_writing_the_same_state_again_is_allowed(state: JobState) -> None:
    check_transition(state, state)


def test_every_state_has_a_row_and_new_rows_are_staged() -> None:
    assert set(TRANSITIONS) == set(JobState)
    assert INITIAL is JobState.STAGED


def test_unknown_states_are_value_errors() -> None:
    with pytest.raises(ValueError):
        check_transition("lost", "queued")
    with pytest.raises(ValueError):
        check_transition("queued", "lost")


@pytest.mark.parametrize("member, text", [
    (JobState.STAGED, "staged"), (JobState.QUEUED, "queued"),
    (JobState.UPLOADING, "uploading"), (JobState.FAILED, "failed"), (JobState.DONE, "done"),
    (Step.NONE, "none"), (Step.ARCHIVED, "archived"), (Step.URL, "url"), (Step.PUT, "put"),
    (Step.REGISTERED, "registered"),
])
def test_members_read_as_their_strings(member: str, text: str) -> None:
    assert member == text and str(member) == text and f"{member}" == text
    assert json.dumps({"state": member}) == json.dumps({"state": text})
    assert type(member)(text) is member


@pytest.mark.parametrize("step, other, reached", [
    (Step.NONE, Step.ARCHIVED, False),
    (Step.ARCHIVED, Step.ARCHIVED, True),
    (Step.URL, Step.ARCHIVED, True),
    (Step.PUT, Step.ARCHIVED, True),
    (Step.REGISTERED, Step.PUT, True),
    (Step.PUT, Step.REGISTERED, False),
    (Step.NONE, Step.NONE, True),
])
def test_steps_are_ordered(step: Step, other: Step, reached: bool) -> None:
    assert step.reached(other) is reached


@pytest.mark.parametrize("column, enum", [("state", JobState), ("step", Step)])
def test_the_schema_checks_the_same_values(column: str, enum: type) -> None:
    """The schema is the on-disk format: its CHECK lists are spelled out, not derived."""
    match = re.search(rf"CHECK \({column} IN \(([^)]*)\)\)", journal._SCHEMA)
    assert match is not None
    assert [v.strip().strip("'") for v in match.group(1).split(",")] == [m.value for m in enum]
