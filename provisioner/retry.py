"""The one retry helper: exponential backoff with jitter, bounded by attempts and a deadline."""

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
) -> T:
    """Call fn until it succeeds, a non-retryable error is raised, or the budget runs out.

    The last error is re-raised as itself (not wrapped), so callers keep their exception tree.
    """

    def before_sleep(state: RetryCallState) -> None:
        if on_retry and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(state.attempt_number, exc)

    retrying = Retrying(
        retry=retry_if_exception(retry_on),
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline),
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        before_sleep=before_sleep,
        reraise=True,
    )
    return retrying(fn)
