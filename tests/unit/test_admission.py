from __future__ import annotations

import pytest

from router.errors import Code, InferlineError
from router.pipeline.admission import Admission, effective_priority


def test_lower_classes_are_shed_first() -> None:
    adm = Admission(max_in_flight=10)
    tickets = [adm.admit(f"t{i}", "critical", 100) for i in range(5)]
    # 5 in flight: batch (share 0.5 -> 5) is now refused, standard (0.8 -> 8) is not.
    with pytest.raises(InferlineError) as exc:
        adm.admit("x", "batch", 100)
    assert exc.value.code is Code.RESOURCE_EXHAUSTED
    tickets += [adm.admit("y", "standard", 100) for _ in range(3)]
    with pytest.raises(InferlineError):
        adm.admit("y", "standard", 100)
    tickets += [adm.admit("z", "critical", 100) for _ in range(2)]
    with pytest.raises(InferlineError):
        adm.admit("z", "critical", 100)
    assert adm.shed[("overload", "batch")] == 1
    for t in tickets:
        adm.release(t)
    assert adm.in_flight == 0
    adm.admit("x", "batch", 100)


def test_tenant_cap_isolates_tenants() -> None:
    adm = Admission(max_in_flight=100)
    held = [adm.admit("noisy", "standard", 3) for _ in range(3)]
    with pytest.raises(InferlineError) as exc:
        adm.admit("noisy", "standard", 3)
    assert exc.value.code is Code.RESOURCE_EXHAUSTED
    adm.admit("quiet", "standard", 3)  # another tenant is unaffected
    adm.release(held[0])
    adm.release(held[0])  # double release is harmless
    assert adm.tenant_in_flight("noisy") == 2
    adm.admit("noisy", "standard", 3)


@pytest.mark.parametrize(
    ("requested", "allowed", "expected"),
    [
        ("critical", "standard", "standard"),
        ("batch", "standard", "batch"),
        (None, "critical", "standard"),
        ("bogus", "critical", "standard"),
        ("critical", "critical", "critical"),
        ("standard", "batch", "batch"),
    ],
)
def test_effective_priority(requested: str | None, allowed: str, expected: str) -> None:
    assert effective_priority(requested, allowed) == expected


def test_every_class_gets_a_slot_at_the_smallest_capacity() -> None:
    adm = Admission(max_in_flight=1)  # batch's 0.5 share must not round to 0
    for priority in ("batch", "standard", "critical"):
        ticket = adm.admit("t", priority, 10)
        with pytest.raises(InferlineError) as exc:
            adm.admit("u", "critical", 10)
        assert exc.value.code is Code.RESOURCE_EXHAUSTED
        adm.release(ticket)
