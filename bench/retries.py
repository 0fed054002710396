"""What blocks.retry.call_with_retries costs next to tenacity (installed with Prefect) doing the same: retry a
TransientError with blocks.retry.backoff (Retry-After honoured), at most `max_retries` times, re-raising the last.

    .venv/bin/python -m bench.retries

Prints microseconds per call: the success path and a call failing twice (sleeping stubbed out), and tenacity's
import time. Standalone (not a `bench.run` section): the figures back the choice written in blocks/retry.py.
"""

from __future__ import annotations

import json
import time
import timeit

import blocks.retry as retry
from blocks.errors import TransientError


class _FailsTwice:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls < 3:
            raise TransientError("flaky", provider="bench", operation="retries")
        return 1


def _per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def measure(number: int = 20_000) -> dict[str, float]:
    started = time.perf_counter()
    import tenacity

    import_ms = (time.perf_counter() - started) * 1000
    retry.log.disabled = True  # the retry warnings are not what is measured
    retry.sleep, real_sleep = (lambda s: None), retry.sleep
    try:
        def tenacious(sleep=None) -> tenacity.Retrying:
            return tenacity.Retrying(retry=tenacity.retry_if_exception_type(TransientError),
                                     stop=tenacity.stop_after_attempt(4), reraise=True, sleep=sleep or (lambda s: None),
                                     wait=lambda s: retry.backoff(s.attempt_number - 1, s.outcome.exception()))
        ok, flaky = (lambda: 1), tenacious()
        return {
            "tenacity_import_ms": round(import_ms, 1),
            "success_us": {"call_with_retries": round(_per_call_us(lambda: retry.call_with_retries(ok, max_retries=3),
                                                                   number), 2),
                           "tenacity": round(_per_call_us(lambda: flaky(ok), number), 2)},
            "two_retries_us": {
                "call_with_retries": round(_per_call_us(
                    lambda: retry.call_with_retries(_FailsTwice(), max_retries=3), number), 2),
                "tenacity": round(_per_call_us(lambda: flaky(_FailsTwice()), number), 2)},
        }
    finally:
        retry.sleep = real_sleep
        retry.log.disabled = False


def main() -> None:
    print(json.dumps(measure(), indent=2))


if __name__ == "__main__":
    main()
