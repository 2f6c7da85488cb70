"""Per-provider admission counted in the hub's memory: places held at once, and probe bytes."""

from __future__ import annotations

import pytest

from tessera.errors import TooManyRequests
from tessera.hub.admission import HOUR_S, Admission
from tessera.hub.auth import Principal
from tessera.hub.config import HubLimits
from tessera.names import unprintable
from tests.helpers import FakeClock

pytestmark = pytest.mark.timeout(30)
ALICE = Principal("a" * 32, "alice", False, frozenset())
BOB = Principal("b" * 32, "bob", False, frozenset())
ADMIN = Principal("c" * 32, "admin", True, frozenset())


def test_places_are_per_provider_and_given_back() -> None:
    admission = Admission(HubLimits(max_waiting_leases=2))
    with admission.waiting_lease(ALICE), admission.waiting_lease(ALICE):
        with pytest.raises(TooManyRequests, match="limits.max_waiting_leases") as refused:
            admission.waiting_lease(ALICE).__enter__()
        assert refused.value.retry_after_s == 1.0
        with admission.waiting_lease(BOB), admission.waiting_lease(ADMIN), admission.waiting_lease(ADMIN):
            pass
    with admission.waiting_lease(ALICE), admission.waiting_lease(ALICE):  # both places came back
        pass


def test_one_run_is_created_at_a_time_per_provider() -> None:
    admission = Admission(HubLimits())
    with admission.creating_run(ALICE):
        with pytest.raises(TooManyRequests, match="run being created"):
            admission.creating_run(ALICE).__enter__()
        with admission.creating_run(BOB):
            pass
    with admission.creating_run(ALICE):
        pass


def test_probe_bytes_are_budgeted_per_hour() -> None:
    clock = FakeClock()
    admission = Admission(HubLimits(max_probe_bytes_per_hour=100), clock)
    admission.spend_probe(ALICE, 60)
    with pytest.raises(TooManyRequests, match="max_probe_bytes_per_hour") as refused:
        admission.spend_probe(ALICE, 50)
    assert refused.value.retry_after_s == HOUR_S
    admission.spend_probe(BOB, 100)
    admission.spend_probe(ADMIN, 10**9)
    clock.advance(HOUR_S)
    admission.spend_probe(ALICE, 100)  # the hour has passed


@pytest.mark.parametrize(
    "text",
    ["a\u202eb", "x\u200by", "\u0085", "soft\u00adhyphen", "tag\U000e0041", "private\U0010fffd", "\ud800"],
)
def test_names_refuse_invisible_and_control_characters(text: str) -> None:
    assert unprintable(text) is not None


def test_names_keep_printable_text() -> None:
    assert unprintable("Zoë 日本 ok-42 😀 \u00e9") is None
