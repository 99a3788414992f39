"""The one retry helper: exponential backoff with jitter, bounded by attempts and a deadline.

Every wait between attempts is the run's stop-aware sleep, and the stop flag is looked at before
each attempt and after each failure: a SIGINT or the run's --timeout ends a retry loop within
stop.POLL seconds, with Interrupted or Timeout naming what was being retried, rather than after
the loop's own deadline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from provisioner import stop

T = TypeVar("T")


def retry_call(
    fn: Callable[[], T],
    *,
    retry_on: Callable[[BaseException], bool],
    deadline: float = 60.0,
    attempts: int = 100,
    initial: float = 0.2,
    maximum: float = 5.0,
    on_retry: Callable[[int, BaseException], None] | None = None,
    what: str = "a retry",
) -> T:
    """Call fn until it succeeds, a non-retryable error is raised, or the budget runs out.

    The last error is re-raised as itself (not wrapped), so callers keep their exception tree.
    `what` names the wait in the Interrupted or Timeout raised when the run stops meanwhile.
    """

    def attempt() -> T:
        stop.check(what)
        try:
            return fn()
        except Exception:
            # A failure caused by the stop itself (a socket closed under fn) is reported as the
            # stop, not as one more failed attempt.
            stop.check(what)
            raise

    def before_sleep(state: RetryCallState) -> None:
        if on_retry and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(state.attempt_number, exc)

    retrying = Retrying(
        # Never retry once the run is stopping, whatever the caller's predicate says.
        retry=retry_if_exception(lambda e: not stop.stopping() and retry_on(e)),
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline),
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        sleep=lambda seconds: stop.sleep(seconds, what),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(attempt)
