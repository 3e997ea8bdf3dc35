"""The async queue's pure parts: records and the retry policy."""

from __future__ import annotations

import random

import pytest

from kiln.asyncq.backoff import Finish, Policy, Retry, decide, delay, retryable
from kiln.asyncq.records import (
    CallRecord,
    encode_body,
    new_call_id,
    pack_headers,
    truncate,
    unpack_headers,
    valid_call_id,
)


def test_headers_round_trip() -> None:
    headers = ((b"content-type", b"text/plain"), (b"x-a", b""), (b"x-b", b"a: b"))
    assert unpack_headers(pack_headers(headers)) == headers
    assert unpack_headers(b"") == ()
    assert unpack_headers(None) == ()


def test_call_ids() -> None:
    a, b = new_call_id(), new_call_id()
    assert a != b
    assert valid_call_id(a)
    assert not valid_call_id("../etc")
    assert not valid_call_id(a.upper())


def test_truncate() -> None:
    assert truncate(b"abc", 3) == (b"abc", False)
    assert truncate(b"abcd", 3) == (b"abc", True)


def test_to_json_text_and_binary() -> None:
    rec = CallRecord(
        id="x",
        function="f",
        body=b"",
        headers=(),
        idempotency_key=None,
        state="succeeded",
        attempts=1,
        created=1.0,
        due=1.0,
        status=200,
        result_body=b"\xff",
        result_headers=((b"a", b"b"),),
    )
    out = rec.to_json()
    assert out["result"]["body_base64"] == "/w=="
    assert out["result"]["headers"] == [["a", "b"]]
    assert encode_body(b"hi") == {"body": "hi"}
    assert "result" not in rec.to_json(with_result=False)


@pytest.mark.parametrize(
    ("status", "code", "on_error", "expected"),
    [
        (503, "no_memory", False, True),
        (504, "timeout", False, True),
        (429, "rate_limited", False, True),
        (502, "start_failed", False, True),
        (502, "host_died", False, True),
        (502, "function_error", False, False),
        (502, "function_error", True, True),
        (502, "out_of_memory", True, True),
        (404, "unknown_function", True, False),
        (413, "body_too_large", False, False),
        (500, "internal", False, False),
    ],
)
def test_retryable(status: int, code: str, on_error: bool, expected: bool) -> None:
    assert retryable(status, code, retry_on_error=on_error) is expected


def test_delay_is_exponential_capped_and_jittered() -> None:
    p = Policy(base=1.0, cap=10.0, jitter=0.0)
    rng = random.Random(1)
    assert [delay(n, p, rng) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    p = Policy(base=2.0, cap=100.0, jitter=0.5)
    for n in range(1, 6):
        for _ in range(50):
            d = delay(n, p, rng)
            assert 0.5 * 2.0 * 2 ** (n - 1) <= d <= 2.0 * 2 ** (n - 1)


def test_decide() -> None:
    rng = random.Random(0)
    p = Policy(retries=2, jitter=0.0)

    def d(ok: bool, status: int, code: str | None, attempts: int) -> object:
        return decide(
            ok=ok, status=status, code=code, attempts=attempts, policy=p, now=100.0, rng=rng
        )

    assert d(True, 200, None, 1) == Finish(ok=True)
    assert d(False, 503, "no_memory", 1) == Retry(due=101.0)
    assert d(False, 503, "no_memory", 2) == Retry(due=102.0)
    assert d(False, 503, "no_memory", 3) == Finish(ok=False)
    assert d(False, 502, "function_error", 1) == Finish(ok=False)
    none = Policy(retries=0)
    assert decide(
        ok=False, status=503, code="x", attempts=1, policy=none, now=0.0, rng=rng
    ) == Finish(ok=False)
