"""Which worker this api process handed each job to, lately: so that a done call from that worker
can store its result without first asking the dispatcher who holds the job.

The dispatcher's decision (the job decider's FinishJob) stays the only judge of a result; what
this spares is the question asked before the result is stored, which keeps a worker (customer
code) from storing results for jobs it never had. A worker's result for a job this process
offered it is stored at once, even in the rare case that the job was taken from it in the
meantime (then the result is refused with a 409, and the row goes with the job's retention); any
other done call asks first, as before."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

MAX_OFFERS = 100_000
# Long enough for most jobs to run; past it, a done call asks first, as any other.
OFFER_TTL_S = 3600.0


class RecentOffers:
    def __init__(
        self,
        ttl_s: float = OFFER_TTL_S,
        max_offers: int = MAX_OFFERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max = max_offers
        self._clock = clock
        # job id -> (worker id, offered until)
        self._offers: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._offers)

    def offered(self, job_id: str, worker_id: str) -> None:
        self._offers.pop(job_id, None)
        self._offers[job_id] = (worker_id, self._clock() + self._ttl_s)
        while len(self._offers) > self._max:
            self._offers.popitem(last=False)

    def holds(self, job_id: str, worker_id: str) -> bool:
        """Whether this process offered `job_id` to `worker_id` within the last `ttl_s`."""
        offer = self._offers.get(job_id)
        return offer is not None and offer[0] == worker_id and offer[1] > self._clock()

    def forget(self, job_id: str) -> None:
        self._offers.pop(job_id, None)
