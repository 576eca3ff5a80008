"""A/B assignment: deterministic, salted, and within 2% of the split (chi-square)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from scipy.stats import chisquare

from router.pipeline.experiment import Arm, Experiment, ShadowSpec, assign, bucket, unit_id
from router.pipeline.types import CandidateIn

N = 100_000


def experiment(weights: tuple[float, ...], salt: str = "exp-1") -> Experiment:
    arms = tuple(Arm(name=f"a{i}", version=i + 1, weight=w) for i, w in enumerate(weights))
    return Experiment(model="fraud", name="split", salt=salt, arms=arms)


def test_a_ranker_request_is_assigned_by_its_user_not_its_first_item() -> None:
    """Every candidate carries the user and its own item: the unit is what they
    share (the user), so one user sees one arm whatever items come first."""
    exp = experiment((0.5, 0.5))

    def request(user: int, items: range) -> tuple[CandidateIn, ...]:
        return tuple(CandidateIn(f"c{i}", {"user_id": user, "item_id": i}, {}) for i in items)

    units = {unit_id(exp, request(42, range(first, first + 20)), "r") for first in range(1, 20)}
    assert units == {"user_id=42"}
    assert len({assign(exp, u).name for u in units}) == 1
    # Nothing shared (a batch of accounts): the first candidate's keys, as before.
    batch = (CandidateIn("a", {"account_id": 1}, {}), CandidateIn("b", {"account_id": 2}, {}))
    assert unit_id(exp, batch, "r") == "account_id=1"
    # One candidate shares everything with itself: name the key to assign by.
    single = request(42, range(5, 6))
    assert unit_id(exp, single, "r") == "item_id=5|user_id=42"
    by_user = exp.model_copy(update={"unit_key": "user_id"})
    assert unit_id(by_user, single, "r") == "user_id=42"
    assert unit_id(by_user, batch, "r") == "r"  # no such key: per request


def test_unit_key_must_be_a_name() -> None:
    with pytest.raises(ValueError):
        Experiment.model_validate({**experiment((1.0,)).model_dump(), "unit_key": "user id"})


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.9, 0.1), (0.7, 0.2, 0.1), (0.95, 0.05)])
def test_split_matches_weights_over_100k_units(weights: tuple[float, ...]) -> None:
    exp = experiment(weights)
    names = [a.name for a in exp.arms]
    counts = np.zeros(len(names))
    for u in range(N):
        counts[names.index(assign(exp, f"account_id={u}").name)] += 1
    shares = counts / N
    expected = np.asarray(weights) / sum(weights)
    assert np.all(np.abs(shares - expected) <= 0.02), shares
    # Goodness of fit: the assignment is indistinguishable from the configured split.
    assert chisquare(counts, expected * N).pvalue > 0.001


def test_assignment_is_deterministic_and_salted() -> None:
    exp = experiment((0.5, 0.5))
    units = [f"account_id={u}" for u in range(2000)]
    first = [assign(exp, u).name for u in units]
    assert first == [assign(experiment((0.5, 0.5)), u).name for u in units]
    resalted = [assign(experiment((0.5, 0.5), salt="exp-2"), u).name for u in units]
    changed = sum(a != b for a, b in zip(first, resalted, strict=True)) / len(units)
    assert 0.4 < changed < 0.6  # a new salt reshuffles about half the units
    assert 0.0 <= bucket("s", "u") < 1.0


def test_zero_weight_arm_gets_nothing() -> None:
    exp = experiment((1.0, 0.0))
    assert {assign(exp, str(u)).name for u in range(5000)} == {"a0"}


def test_unit_is_the_entity_key_or_the_request() -> None:
    exp = experiment((0.5, 0.5))
    cands = (CandidateIn("c", {"user_id": 7, "account_id": 42}, {}),)
    assert unit_id(exp, cands, "req-1") == "account_id=42|user_id=7"
    assert unit_id(exp, (CandidateIn("c", {}, {}),), "req-1") == "req-1"
    per_request = exp.model_copy(update={"unit": "request"})
    assert unit_id(per_request, cands, "req-1") == "req-1"


@pytest.mark.parametrize(
    "arms",
    [
        (Arm(name="a", version=1, weight=0),),
        (Arm(name="a", version=1, weight=1), Arm(name="a", version=2, weight=1)),
        (Arm(name="Bad Name", version=1, weight=1),),
    ],
)
def test_invalid_experiments_are_refused(arms: tuple[Arm, ...]) -> None:
    with pytest.raises(ValidationError):
        Experiment(model="fraud", name="x", salt="s", arms=arms)


@pytest.mark.parametrize("weight", [float("inf"), float("nan")])
def test_non_finite_weights_are_refused(weight: float) -> None:
    """An infinite weight would send every unit to the other arm (its running sum
    never exceeds the bucket); NaN would break the split the same way."""
    with pytest.raises(ValidationError):
        Arm(name="a", version=1, weight=weight)
    with pytest.raises(ValidationError):
        ShadowSpec(model="fraud", version=2, fraction=weight)
