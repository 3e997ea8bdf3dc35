"""The Fn ``http-stream`` contract, pure: env, deadline, header filtering, verdicts, listener."""

from __future__ import annotations

import calendar
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.fncontract import (
    HOP_BY_HOP,
    NOT_YET,
    HttpRequest,
    Invalid,
    Outcome,
    Ready,
    Verdict,
    call_request_headers,
    check_listener,
    container_env,
    format_deadline,
    interpret_response,
    split_invoke_target,
)

MiB = 1024 * 1024
T0 = calendar.timegm((2026, 11, 23, 10, 0, 0, 0, 0, 0))


# ---- env ----------------------------------------------------------------------


def test_container_env_has_the_fn_variables() -> None:
    env = container_env("resize", 128 * MiB, {"LOG_LEVEL": "debug"})
    assert env == {
        "LOG_LEVEL": "debug",
        "FN_LISTENER": "unix:/tmp/iofs/lsnr.sock",
        "FN_FORMAT": "http-stream",
        "FN_MEMORY": "128",
        "FN_FN_ID": "resize",
        "FN_APP_ID": "kiln",
        "FN_TYPE": "sync",
    }


def test_container_env_contract_wins_over_function_env() -> None:
    env = container_env("f", 64 * MiB, {"FN_LISTENER": "unix:/elsewhere.sock", "FN_FORMAT": "x"})
    assert env["FN_LISTENER"] == "unix:/tmp/iofs/lsnr.sock"
    assert env["FN_FORMAT"] == "http-stream"


@pytest.mark.parametrize(
    ("memory", "mb"), [(256 * MiB, "256"), (256 * MiB + 1000, "256"), (1000, "1")]
)
def test_fn_memory_is_whole_mb(memory: int, mb: str) -> None:
    assert container_env("f", memory, {})["FN_MEMORY"] == mb


# ---- deadline -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (T0 + 0.123, "2026-11-23T10:00:00.123Z"),
        (T0, "2026-11-23T10:00:00.000Z"),
        (T0 + 0.1239, "2026-11-23T10:00:00.123Z"),  # truncated, never later than the real one
        (T0 + 59.9999, "2026-11-23T10:00:59.999Z"),
        (T0 + 0.001, "2026-11-23T10:00:00.001Z"),  # 0.001 is not exact in binary
        (0.5, "1970-01-01T00:00:00.500Z"),
    ],
)
def test_format_deadline(seconds: float, text: str) -> None:
    assert format_deadline(seconds) == text


# ---- request headers ------------------------------------------------------------

TRIGGER = 5  # Fn-Call-Id, Fn-Deadline, Fn-Intent, Fn-Http-Method, Fn-Http-Request-Url


def encapsulated(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The caller headers a function gets, unwrapped from ``Fn-Http-H-``."""
    return [(k[len(b"Fn-Http-H-") :], v) for k, v in headers if k.startswith(b"Fn-Http-H-")]


def test_request_headers_are_those_of_fns_http_trigger() -> None:
    http = HttpRequest("GET", "/users/42?full=1")
    headers = call_request_headers("01HZX", T0 + 30.5, [(b"x-a", b"1")], http)
    assert headers == [
        (b"Fn-Call-Id", b"01HZX"),
        (b"Fn-Deadline", b"2026-11-23T10:00:30.500Z"),
        (b"Fn-Intent", b"httprequest"),
        (b"Fn-Http-Method", b"GET"),
        (b"Fn-Http-Request-Url", b"/users/42?full=1"),
        (b"Fn-Http-H-x-a", b"1"),
    ]


def test_a_call_without_a_request_is_a_post_to_the_root() -> None:
    headers = call_request_headers("c", T0, [])
    assert headers[2:] == [
        (b"Fn-Intent", b"httprequest"),
        (b"Fn-Http-Method", b"POST"),
        (b"Fn-Http-Request-Url", b"/"),
    ]


def test_content_type_is_sent_as_itself_too() -> None:
    headers = call_request_headers("c", T0, [(b"Content-Type", b"application/json")])
    assert headers[TRIGGER:] == [
        (b"Content-Type", b"application/json"),
        (b"Fn-Http-H-Content-Type", b"application/json"),
    ]


@pytest.mark.parametrize("name", sorted(HOP_BY_HOP))
def test_hop_by_hop_headers_are_dropped(name: bytes) -> None:
    headers = call_request_headers("c", T0, [(name, b"v"), (name.upper(), b"v"), (b"x-keep", b"k")])
    assert headers[TRIGGER:] == [(b"Fn-Http-H-x-keep", b"k")]


def test_caller_headers_keep_order_case_and_repeats() -> None:
    caller = [
        (b"Accept", b"*/*"),
        (b"X-Multi", b"1"),
        (b"X-Multi", b"2"),
    ]
    assert encapsulated(call_request_headers("c", T0, caller)) == caller


def test_expect_is_not_forwarded() -> None:
    caller = [(b"Expect", b"100-continue"), (b"x-a", b"1")]
    assert call_request_headers("c", T0, caller)[TRIGGER:] == [(b"Fn-Http-H-x-a", b"1")]


def test_headers_named_by_connection_are_dropped() -> None:
    caller = [
        (b"connection", b"keep-alive, X-Hop , x-other"),
        (b"x-hop", b"1"),
        (b"X-Other", b"2"),
        (b"x-end", b"3"),
    ]
    assert call_request_headers("c", T0, caller)[TRIGGER:] == [(b"Fn-Http-H-x-end", b"3")]


def test_callers_cannot_forge_fn_headers() -> None:
    caller = [
        (b"fn-call-id", b"forged"),
        (b"Fn-Deadline", b"2099-01-01T00:00:00.000Z"),
        (b"fn-http-status", b"200"),
        (b"fn-intent", b"x"),
        (b"Fn-Http-Method", b"DELETE"),
        (b"fn-http-h-x-sneaky", b"1"),
        (b"x-fn-ok", b"kept"),
    ]
    headers = call_request_headers("real", T0, caller)
    assert headers[0] == (b"Fn-Call-Id", b"real")
    assert headers[TRIGGER:] == [(b"Fn-Http-H-x-fn-ok", b"kept")]
    for name in (b"fn-call-id", b"fn-intent", b"fn-http-method", b"fn-deadline"):
        assert sum(1 for k, _ in headers if k.lower() == name) == 1


def test_request_headers_accept_any_iterable() -> None:
    gen = ((k, v) for k, v in [(b"x-a", b"1")])
    assert call_request_headers("c", T0, gen)[TRIGGER:] == [(b"Fn-Http-H-x-a", b"1")]


@pytest.mark.parametrize(
    ("rest", "query", "name", "url"),
    [
        (b"hello", b"", "hello", "/"),
        (b"hello/", b"", "hello", "/"),
        (b"hello/users/42", b"", "hello", "/users/42"),
        (b"hello", b"a=1&b=2", "hello", "/?a=1&b=2"),
        (b"hello/a%20b/", b"q=%C3%A9", "hello", "/a%20b/?q=%C3%A9"),
        (b"", b"", "", "/"),
    ],
)
def test_split_invoke_target(rest: bytes, query: bytes, name: str, url: str) -> None:
    assert split_invoke_target(rest, query) == (name, url)


def test_http_request_path_and_query() -> None:
    http = HttpRequest("GET", "/a/b?x=1&y=2")
    assert (http.path, http.query) == ("/a/b", "x=1&y=2")
    assert (HttpRequest().path, HttpRequest().query) == ("/", "")


# ---- the answer --------------------------------------------------------------------


def test_200_without_fn_http_status_is_200() -> None:
    assert interpret_response(200, []) == Outcome(Verdict.OK, 200, ())


def test_fn_http_status_is_the_callers_status() -> None:
    outcome = interpret_response(200, [(b"fn-http-status", b"404")])
    assert (outcome.verdict, outcome.status) == (Verdict.OK, 404)


@pytest.mark.parametrize("raw", [b"abc", b"", b"99", b"100", b"600", b"2000", b"-200", b"20 0"])
def test_unusable_fn_http_status_means_200_as_in_fn(raw: bytes) -> None:
    assert interpret_response(200, [(b"Fn-Http-Status", raw)]).status == 200


def test_fn_http_h_headers_become_caller_headers() -> None:
    outcome = interpret_response(
        200,
        [
            (b"Fn-Http-Status", b"201"),
            (b"Fn-Http-H-X-Echo", b"ping"),
            (b"fn-http-h-set-cookie", b"a=1"),
            (b"fn-http-h-set-cookie", b"b=2"),
            (b"Content-Type", b"text/plain"),
            (b"Date", b"Mon, 23 Nov 2026 10:00:00 GMT"),
            (b"Server", b"fdk"),
            (b"Content-Length", b"5"),
            (b"Connection", b"keep-alive"),
            (b"Fn-Call-Id", b"c"),
            (b"Fn-Whatever", b"x"),
        ],
    )
    assert outcome == Outcome(
        Verdict.OK,
        201,
        (
            (b"x-echo", b"ping"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"content-type", b"text/plain"),
        ),
    )


def test_mapped_hop_by_hop_and_kiln_headers_are_dropped() -> None:
    outcome = interpret_response(
        200,
        [
            (b"fn-http-h-content-length", b"999"),
            (b"fn-http-h-transfer-encoding", b"chunked"),
            (b"fn-http-h-connection", b"close"),
            (b"fn-http-h-kiln-call-id", b"forged"),
            (b"fn-http-h-", b"empty name"),
            (b"fn-http-h-x-ok", b"1"),
        ],
    )
    assert outcome.headers == ((b"x-ok", b"1"),)


def test_mapped_content_type_wins_over_the_raw_one() -> None:
    outcome = interpret_response(
        200,
        [(b"content-type", b"application/octet-stream"), (b"fn-http-h-content-type", b"text/html")],
    )
    assert outcome.headers == ((b"content-type", b"text/html"),)


def test_502_is_a_function_error_and_keeps_the_container() -> None:
    outcome = interpret_response(
        502, [(b"content-type", b"text/plain"), (b"fn-http-status", b"200")]
    )
    assert outcome == Outcome(Verdict.FUNCTION_ERROR, 502, ())


def test_504_is_a_function_timeout() -> None:
    assert interpret_response(504, []) == Outcome(Verdict.TIMEOUT, 504, ())


@pytest.mark.parametrize(
    "status", [100, 101, 201, 204, 301, 304, 401, 404, 500, 501, 503, 505, 599]
)
def test_any_other_status_breaks_the_container(status: int) -> None:
    outcome = interpret_response(status, [(b"fn-http-status", b"200")])
    assert outcome == Outcome(Verdict.BROKEN, 502, ())


# ---- check_listener -----------------------------------------------------------------


@pytest.fixture
def d() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kiln-lsnr-", dir="/tmp"))  # short: socket paths
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def bind(path: Path, held: list[socket.socket]) -> Path:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    held.append(s)
    return path


def test_missing_is_not_yet(d: Path) -> None:
    assert check_listener(d) == NOT_YET


def test_real_socket_is_ready(d: Path, sockets: list[socket.socket]) -> None:
    bind(d / "lsnr.sock", sockets)
    assert check_listener(d) == Ready(d / "lsnr.sock")


@pytest.mark.parametrize("target", ["phony1234.sock", "./phony1234.sock"])
def test_relative_symlink_to_socket_in_dir_is_ready(
    d: Path, sockets: list[socket.socket], target: str
) -> None:
    bind(d / "phony1234.sock", sockets)
    os.symlink(target, d / "lsnr.sock")
    assert check_listener(d) == Ready(d / "phony1234.sock")


def expect_invalid(d: Path, *words: str) -> None:
    state = check_listener(d)
    assert isinstance(state, Invalid), state
    for word in words:
        assert word in state.reason


def test_absolute_symlink_is_invalid(d: Path, sockets: list[socket.socket]) -> None:
    bind(d / "phony.sock", sockets)
    os.symlink(d / "phony.sock", d / "lsnr.sock")  # absolute, even though it is in the dir
    expect_invalid(d, "absolute")


def test_symlink_escaping_the_dir_is_invalid(d: Path, sockets: list[socket.socket]) -> None:
    outside = Path(tempfile.mkdtemp(prefix="kiln-out-", dir="/tmp"))
    try:
        bind(outside / "s.sock", sockets)
        os.symlink(f"../{outside.name}/s.sock", d / "lsnr.sock")
        expect_invalid(d, "same directory")
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_symlink_to_parent_is_invalid(d: Path) -> None:
    os.symlink("..", d / "lsnr.sock")
    expect_invalid(d, "same directory")


def test_symlink_into_a_subdir_is_invalid(d: Path, sockets: list[socket.socket]) -> None:
    (d / "sub").mkdir()
    bind(d / "sub" / "s.sock", sockets)
    os.symlink("sub/s.sock", d / "lsnr.sock")
    expect_invalid(d, "same directory")


def test_symlink_to_regular_file_is_invalid(d: Path) -> None:
    (d / "phony.sock").write_text("not a socket")
    os.symlink("phony.sock", d / "lsnr.sock")
    expect_invalid(d, "regular file", "not a socket")


def test_dangling_symlink_is_invalid(d: Path) -> None:
    os.symlink("phony-gone.sock", d / "lsnr.sock")
    expect_invalid(d, "dangling")


def test_symlink_to_a_symlink_is_invalid(d: Path, sockets: list[socket.socket]) -> None:
    bind(d / "real.sock", sockets)
    os.symlink("real.sock", d / "hop.sock")
    os.symlink("hop.sock", d / "lsnr.sock")
    expect_invalid(d, "symlink")


def test_self_symlink_is_invalid(d: Path) -> None:
    os.symlink("lsnr.sock", d / "lsnr.sock")
    expect_invalid(d)


def test_regular_file_is_invalid(d: Path) -> None:
    (d / "lsnr.sock").write_text("")
    expect_invalid(d, "regular file")


def test_directory_is_invalid(d: Path) -> None:
    (d / "lsnr.sock").mkdir()
    expect_invalid(d, "directory")


def test_fifo_is_invalid(d: Path) -> None:
    os.mkfifo(d / "lsnr.sock")
    expect_invalid(d, "FIFO")


@pytest.mark.parametrize("status", [400, 413, 414, 431])
def test_a_request_the_fdk_refuses_is_the_callers_error(status: int) -> None:
    assert interpret_response(status, []) == Outcome(Verdict.REJECTED, status, ())


# ---- both directions, as the real FDKs speak ------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        [  # fdk-python 0.1.128 (names as h11 hands them over: lowercase)
            (b"connection", b"keep-alive"),
            (b"keep-alive", b"75"),
            (b"fn-http-h-x-custom", b"1"),
            (b"fn-fdk-version", b"fdk-python/0.1.128"),
            (b"fn-fdk-runtime", b"python/3.11.2 final"),
            (b"fn-http-status", b"201"),
            (b"content-length", b"4"),
            (b"content-type", b"text/plain"),
        ],
        [  # @fnproject/fdk 0.0.76
            (b"fn-http-status", b"201"),
            (b"fn-http-h-x-custom", b"1"),
            (b"content-type", b"text/plain"),
            (b"fn-fdk-version", b"fdk-node/0.0.76 (njsv=v20.20.2)"),
            (b"fn-fdk-runtime", b"node/20.20.2"),
            (b"date", b"Wed, 02 Dec 2026 07:05:55 GMT"),
            (b"connection", b"keep-alive"),
            (b"transfer-encoding", b"chunked"),
        ],
    ],
    ids=["fdk-python", "fdk-node"],
)
def test_fdk_answers_map_to_the_callers_status_and_headers(
    answer: list[tuple[bytes, bytes]],
) -> None:
    outcome = interpret_response(200, answer)
    assert outcome == Outcome(
        Verdict.OK, 201, ((b"x-custom", b"1"), (b"content-type", b"text/plain"))
    )


def test_a_request_round_trips_through_the_trigger_headers() -> None:
    """What the caller sent is what an FDK decodes from the trigger headers."""
    caller = [(b"X-Trace", b"abc"), (b"Accept", b"*/*"), (b"Content-Type", b"text/plain")]
    headers = call_request_headers("c", T0, caller, HttpRequest("DELETE", "/a?b=1"))
    by_name = {k.lower(): v for k, v in headers}
    assert by_name[b"fn-intent"] == b"httprequest"
    assert by_name[b"fn-http-method"] == b"DELETE"
    assert by_name[b"fn-http-request-url"] == b"/a?b=1"
    assert encapsulated(headers) == caller
