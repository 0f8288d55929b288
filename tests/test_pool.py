"""The worker pool with hand-written fake Graph answers and a fake clock (no real sleeping)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from conftest import FakeClock, run_pool

from onboard.errors import AuthError, GraphError, ThrottledError, TransientError
from onboard.graph import CreatedPass
from onboard.outcomes import Failed, Issued, Origin, PassRequest
from onboard.retrying import Retries

START = datetime(2027, 1, 4, 8, tzinfo=timezone.utc)


def request(row: int, user: str | None = None) -> PassRequest:
    return PassRequest(Origin("hires.csv", row), user or f"user{row}@contoso.com", None, START,
                       480, True)


def created(value: str = "+Secret1") -> CreatedPass:
    return CreatedPass(value, "method-1", START, START, 480, True, "req-ok")


class Script:
    """A fake create(): answers for each user from a list, in order, then succeeds."""

    def __init__(self, answers: dict[str, list[Exception]], clock: FakeClock | None = None):
        self.answers = answers
        self.calls: list[tuple[str, float]] = []
        self.clock = clock

    async def __call__(self, req: PassRequest) -> CreatedPass:
        self.calls.append((req.user, self.clock.now if self.clock else 0.0))
        await asyncio.sleep(0)
        queue = self.answers.get(req.user, [])
        if queue:
            raise queue.pop(0)
        return created(f"+pass-{req.user}")


def throttled(seconds: float | None = 2.0) -> ThrottledError:
    return ThrottledError("Too many requests", status=429, code="TooManyRequests",
                          request_id="req-429", retry_after=seconds)


def test_429_then_success_is_retried_after_retry_after() -> None:
    """A 429 with Retry-After 2 is retried once 2 s have passed; the pass is issued."""
    clock = FakeClock()
    script = Script({"user2@contoso.com": [throttled(2.0)]}, clock)
    result = run_pool([request(2)], script, clock)
    (outcome,) = result.outcomes
    assert isinstance(outcome, Issued)
    assert (outcome.attempts, outcome.temporary_access_pass) == (2, "+pass-user2@contoso.com")
    assert script.calls == [("user2@contoso.com", 0.0), ("user2@contoso.com", 2.0)]
    assert result.retries == 1


def test_503_then_success_backs_off_exponentially() -> None:
    """Two 503s without Retry-After wait 1 s then 2 s (each plus up to 1 s jitter), then succeed."""
    clock = FakeClock()
    boom = [TransientError("unavailable", status=503) for _ in range(2)]
    script = Script({"user2@contoso.com": boom}, clock)
    result = run_pool([request(2)], script, clock)
    times = [t for _, t in script.calls]
    assert times[0] == 0.0
    assert 1.0 <= times[1] <= 2.0
    assert 2.0 <= times[2] - times[1] <= 3.0
    assert isinstance(result.outcomes[0], Issued) and result.outcomes[0].attempts == 3


def test_404_and_403_are_not_retried() -> None:
    """Definite answers fail the row after one attempt, with status, code and request id."""
    script = Script({
        "user2@contoso.com": [GraphError("Resource 'x' does not exist", status=404,
                                         code="Request_ResourceNotFound", request_id="r404")],
        "user3@contoso.com": [GraphError("Request Authorization failed", status=403,
                                         code="accessDenied", request_id="r403")],
    })
    result = run_pool([request(2), request(3)], script)
    assert len(script.calls) == 2
    failed = sorted(result.outcomes, key=lambda o: o.origin.row)
    assert [(f.reason, f.http_status, f.graph_code, f.attempts, f.request_id) for f in failed] == [
        ("User not found", 404, "Request_ResourceNotFound", 1, "r404"),
        ("Permission denied", 403, "accessDenied", 1, "r403"),
    ]
    assert "UserAuthenticationMethod.ReadWrite.All" in failed[1].detail


def test_policy_refusal_is_translated() -> None:
    """Graph's 'Converged UserCredentialPolicy' message becomes advice on the pass policy."""
    refusal = GraphError(
        "Converged UserCredentialPolicy does not allow creating or updating this authentication "
        "method. AuthMethodType [TemporaryAccessPass].", status=400, code="badRequest")
    result = run_pool([request(2)], Script({"user2@contoso.com": [refusal]}))
    (failed,) = result.outcomes
    assert isinstance(failed, Failed)
    assert failed.reason == "Outside the pass policy"
    assert "target groups" in failed.detail and "Authentication methods" in failed.detail


def test_retries_stop_at_max_attempts() -> None:
    """A row throttled on every attempt fails after max_attempts with the last status."""
    script = Script({"user2@contoso.com": [throttled(0.5) for _ in range(10)]})
    result = run_pool([request(2)], script, max_attempts=3)
    (failed,) = result.outcomes
    assert isinstance(failed, Failed)
    assert (failed.reason, failed.attempts, failed.http_status) == ("Gave up after retries", 3, 429)
    assert len(script.calls) == 3


def test_auth_failure_stops_the_pool_and_every_row_gets_an_outcome() -> None:
    """An AuthError stops new sends; the rows not sent fail as 'Not sent', none are lost."""
    script = Script({"user2@contoso.com": [AuthError("token refused")]})
    result = run_pool([request(n) for n in range(2, 8)], script, concurrency=1)
    assert result.aborted is not None
    rows = sorted(o.origin.row for o in result.outcomes)
    assert rows == [2, 3, 4, 5, 6, 7]
    assert all(isinstance(o, Failed) and o.reason == "Not sent: run stopped"
               for o in result.outcomes)
    assert len(script.calls) == 1


def test_never_more_in_flight_than_concurrency() -> None:
    """With concurrency 3 and 20 rows, at most 3 creates run at the same time."""
    in_flight = 0
    peak = 0

    async def create(req: PassRequest) -> CreatedPass:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return created()

    result = run_pool([request(n) for n in range(2, 22)], create, concurrency=3)
    assert peak == 3
    assert len(result.outcomes) == 20


def test_issued_repr_hides_the_pass() -> None:
    """The record holding a pass never shows it in its repr."""
    result = run_pool([request(2)], Script({}))
    (issued,) = result.outcomes
    assert "+pass-" not in repr(issued)
    assert "+pass-" not in repr(created("+pass-x"))


class BatchScript:
    """A fake create_passes(): per user, a list of answers (errors or None for a pass)."""

    def __init__(self, answers: dict[str, list[Exception | None]], clock: FakeClock,
                 lost: int = 0):
        self.answers = answers
        self.clock = clock
        self.lost = lost  # this many whole batches lose their answer first
        self.batches: list[tuple[list[str], float]] = []

    async def __call__(self, reqs: list[PassRequest]) -> list[CreatedPass | GraphError]:
        self.batches.append(([r.user for r in reqs], self.clock.now))
        await asyncio.sleep(0)
        if self.lost:
            self.lost -= 1
            raise TransientError("gateway timeout", status=504)
        results: list[CreatedPass | GraphError] = []
        for r in reqs:
            queue = self.answers.get(r.user, [])
            answer = queue.pop(0) if queue else None
            results.append(created(f"+pass-{r.user}") if answer is None else answer)
        return results


def test_batch_sub_responses_each_end_as_their_own_outcome() -> None:
    """In one batch, a 201, a 404 and a 429 become issued, failed and (retried) issued rows;
    the throttled row alone is sent again, after its own Retry-After."""
    clock = FakeClock()
    script = BatchScript({
        "user3@contoso.com": [GraphError("Resource 'x' does not exist", status=404,
                                         code="Request_ResourceNotFound")],
        "user4@contoso.com": [throttled(1.5)],
    }, clock)
    result = run_pool([request(2), request(3), request(4)], Script({}), clock, concurrency=1,
                 create_batch=script, batch_size=20)
    outcomes = {o.origin.row: o for o in result.outcomes}
    assert isinstance(outcomes[2], Issued) and outcomes[2].attempts == 1
    assert isinstance(outcomes[3], Failed) and outcomes[3].reason == "User not found"
    assert isinstance(outcomes[4], Issued) and outcomes[4].attempts == 2
    assert not outcomes[4].unconfirmed  # a 429 is a definite "not done"
    assert script.batches == [
        (["user2@contoso.com", "user3@contoso.com", "user4@contoso.com"], 0.0),
        (["user4@contoso.com"], 1.5),
    ]
    assert len(result.outcomes) == 3


def test_lost_batch_answer_makes_every_row_in_it_unclear_and_sends_them_again() -> None:
    """A batch whose answer is lost is sent again; its passes are flagged to be confirmed."""
    clock = FakeClock()
    script = BatchScript({}, clock, lost=1)
    result = run_pool([request(n) for n in range(2, 6)], Script({}), clock, concurrency=1,
                 create_batch=script, batch_size=2)
    assert len(script.batches) == 3  # [2,3] lost, [2,3] again, [4,5]
    issued = {o.origin.row: o for o in result.outcomes}
    assert all(isinstance(o, Issued) for o in issued.values())
    assert issued[2].unconfirmed and issued[3].unconfirmed
    assert not issued[4].unconfirmed and not issued[5].unconfirmed
    assert set(result.unclear) == {Origin("hires.csv", 2), Origin("hires.csv", 3)}


def test_batch_rows_that_keep_failing_give_up_with_their_own_last_answer() -> None:
    """A row throttled on every attempt fails after max_attempts; its batch-mates are issued."""
    clock = FakeClock()
    script = BatchScript({"user2@contoso.com": [throttled(0.5) for _ in range(10)]}, clock)
    result = run_pool([request(2), request(3)], Script({}), clock, concurrency=1, max_attempts=3,
                 create_batch=script, batch_size=5)
    outcomes = {o.origin.row: o for o in result.outcomes}
    assert isinstance(outcomes[3], Issued)
    failed = outcomes[2]
    assert isinstance(failed, Failed)
    assert (failed.reason, failed.attempts, failed.http_status) == ("Gave up after retries", 3, 429)


def test_a_journal_that_cannot_be_written_stops_the_pool_with_its_error() -> None:
    """One failed journal write (with a stop event, as the CLI always passes): the pool stops
    its other workers and raises JournalWriteError, whether or not a stop was asked for."""
    import pytest

    from onboard.errors import JournalWriteError

    def failing_once(stop: asyncio.Event, stop_first: bool, calls: dict[str, int]):
        async def durable() -> None:
            calls["n"] += 1
            if calls["n"] == 3:
                if stop_first:
                    stop.set()
                raise JournalWriteError("cannot write the run journal: disk full")
            await asyncio.sleep(0)

        return durable

    for stop_first in (False, True):
        calls = {"n": 0}
        stop = asyncio.Event()
        with pytest.raises(JournalWriteError):
            run_pool([request(n) for n in range(2, 30)], Script({}), stop=stop, concurrency=4,
                durable=failing_once(stop, stop_first, calls))
        assert calls["n"] < 30  # stopped, not carried on row after row


def test_ask_all_asks_nothing_more_once_stopped() -> None:
    """Reads before the first create stop when asked to: keys not asked have no answer."""
    from onboard.runner import ask_all

    asked: list[int] = []

    async def main() -> dict[int, object]:
        stop = asyncio.Event()

        async def ask(key: int) -> int:
            asked.append(key)
            if key == 2:
                stop.set()
            return key * 10

        return dict(await ask_all(range(6), ask, concurrency=1, retries=Retries(1, 0, 0),
                                  stop=stop))  # fmt: skip

    answers = asyncio.run(main())
    assert asked == [0, 1, 2] and answers == {0: 0, 1: 10, 2: 20}
