"""The api's memory of which worker it offered a job to: only that worker, only for a while."""

from __future__ import annotations

from services.api.job_offers import RecentOffers
from tests.manual_clock import ManualClock


def test_only_the_worker_offered_the_job_holds_it_and_only_until_the_offer_ends() -> None:
    clock = ManualClock(50.0)
    offers = RecentOffers(ttl_s=10, clock=clock)
    offers.offered("job-1", "w1")
    assert offers.holds("job-1", "w1")
    assert not offers.holds("job-1", "w2") and not offers.holds("job-2", "w1")
    # Offered again, to another worker: the first no longer holds it.
    offers.offered("job-1", "w2")
    assert offers.holds("job-1", "w2") and not offers.holds("job-1", "w1")
    clock.now += 10
    assert not offers.holds("job-1", "w2")


def test_a_done_job_is_forgotten_and_the_memory_is_bounded() -> None:
    offers = RecentOffers(ttl_s=10, max_offers=3, clock=ManualClock(50.0))
    for n in range(5):
        offers.offered(f"job-{n}", "w1")
    assert len(offers) == 3
    assert not offers.holds("job-0", "w1") and offers.holds("job-4", "w1")
    offers.forget("job-4")
    assert not offers.holds("job-4", "w1")
