"""The one-file Python FDK (``fdk/python/fdk.py``) and the test function scripts.

Its HTTP pieces are tested with plain bytes; then the FDK and the scripts in
``tests/images/functions/`` run as subprocesses laid out as in the
``kiln-test/python`` image (``fdk.py`` beside the script), with ``FN_LISTENER``
pointing into a short dir under /tmp, and Kiln's own client talks to them.

The helpers at the top (``iofs``, ``fn_dir``, ``function_process``) are shared
with test_readiness.py and test_httpstream.py.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

import fdk
from kiln.fncontract import Verdict, call_request_headers, format_deadline, interpret_response
from kiln.hot.httpstream import FnConnection, FnProtocolError
from kiln.hot.readiness import ListenerInvalid, wait_for_listener

REPO = Path(__file__).resolve().parents[2]
FUNCTIONS = REPO / "tests" / "images" / "functions"
FDK_FILE = REPO / "fdk" / "python" / "fdk.py"
START_TIMEOUT = 15.0


# ---- shared helpers -------------------------------------------------------------


@pytest.fixture
def iofs() -> Iterator[Path]:
    """A fresh listener dir with a short path (a Unix socket path must fit in 108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="kiln-iofs-", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def fn_dir() -> Iterator[Path]:
    """``/fn`` as the test image has it: the function scripts and ``fdk.py`` side by side."""
    d = Path(tempfile.mkdtemp(prefix="kiln-fn-", dir="/tmp"))
    try:
        for script in FUNCTIONS.glob("*.py"):
            shutil.copy(script, d)
        shutil.copy(FDK_FILE, d)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@asynccontextmanager
async def function_process(
    fn_dir: Path,
    script: str,
    iofs: Path,
    *,
    python: str = sys.executable,
    capture_stderr: bool = False,
) -> AsyncIterator[trio.Process]:
    """Run ``fn_dir/script`` as a container would (``FN_LISTENER`` into ``iofs``); kill it after."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "FN_LISTENER": f"unix:{iofs}/lsnr.sock",
        "FN_FORMAT": "http-stream",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    proc = await trio.lowlevel.open_process(
        [python, str(fn_dir / script)],
        env=env,
        stderr=subprocess.PIPE if capture_stderr else None,
    )
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            if proc.stderr is not None:
                await proc.stderr.aclose()


@asynccontextmanager
async def running_function(
    fn_dir: Path, script: str, iofs: Path, *, python: str = sys.executable
) -> AsyncIterator[FnConnection]:
    """Start a function script, wait for its listener (inotify), and connect to it."""
    async with function_process(fn_dir, script, iofs, python=python):
        with trio.fail_after(START_TIMEOUT):
            socket_path = await wait_for_listener(iofs)
        async with await FnConnection.open(socket_path) as conn:
            yield conn


def headers_for(*extra: tuple[bytes, bytes], timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    return call_request_headers("call-1", time.time() + timeout, extra)


def header(
    headers: list[tuple[bytes, bytes]] | tuple[tuple[bytes, bytes], ...], name: bytes
) -> bytes | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


# ---- HTTP with plain bytes ---------------------------------------------------------


class _Capture:
    """A stand-in for a socket: collects what ``write_response`` sends."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


def parse(raw: bytes) -> fdk.Request | None:
    return fdk.read_request(io.BytesIO(raw))


def test_reads_content_length_request() -> None:
    req = parse(
        b"POST /call HTTP/1.1\r\nHost: kiln\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhelloNEXT"
    )
    assert req is not None
    assert (req.method, req.target, req.version) == ("POST", "/call", "HTTP/1.1")
    assert req.body == b"hello"
    assert req.headers == {"host": "kiln", "content-length": "5", "x-a": "1, 2"}
    assert req.keep_alive


def test_reads_two_requests_back_to_back() -> None:
    rfile = io.BytesIO(
        b"POST /call HTTP/1.1\r\nContent-Length: 1\r\n\r\na"
        b"POST /call HTTP/1.1\r\nContent-Length: 1\r\n\r\nb"
    )
    first, second = fdk.read_request(rfile), fdk.read_request(rfile)
    assert first is not None
    assert second is not None
    assert (first.body, second.body) == (b"a", b"b")
    assert fdk.read_request(rfile) is None


def test_reads_chunked_request_with_trailers() -> None:
    req = parse(
        b"POST /call HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    assert req is not None
    assert req.body == b"hello world"


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"POST /call HTTP/1.1\r\n", True),
        (b"POST /call HTTP/1.1\r\nConnection: close\r\n", False),
        (b"POST /call HTTP/1.0\r\n", False),
        (b"POST /call HTTP/1.0\r\nConnection: Keep-Alive\r\n", True),
    ],
)
def test_keep_alive_rules(head: bytes, keep_alive: bool) -> None:
    req = parse(head + b"\r\n")
    assert req is not None
    assert req.keep_alive is keep_alive


def test_expect_100_continue_is_answered_before_the_body() -> None:
    cap = _Capture()
    rfile = io.BytesIO(
        b"POST /call HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi"
    )
    req = fdk.read_request(rfile, cap)  # type: ignore[arg-type]
    assert req is not None
    assert req.body == b"hi"
    assert cap.data == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_eof_between_requests_is_none() -> None:
    assert parse(b"") is None
    assert parse(b"\r\n") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /call SPDY/3\r\n\r\n",
        b"POST /call HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /call HTTP/1.1\r\nbad name: x\r\n\r\n",
        b"POST /call HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /call HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
        b"POST /call HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /call HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /call HTTP/1.1\r\nHost: cut",
        b"POST /call HTTP/1.1\r\n" + b"X-A: 1\r\n" * (fdk.MAX_HEADERS + 1) + b"\r\n",
    ],
)
def test_bad_requests(raw: bytes) -> None:
    with pytest.raises(fdk.BadRequest):
        parse(raw)


def test_write_response_bytes() -> None:
    cap = _Capture()
    fdk.write_response(cap, 200, [("Fn-Http-Status", "201")], b"hi", keep_alive=False)  # type: ignore[arg-type]
    assert cap.data == (
        b"HTTP/1.1 200 OK\r\nFn-Http-Status: 201\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\nhi"
    )


def test_listener_path() -> None:
    assert fdk.listener_path("unix:/tmp/iofs/lsnr.sock") == "/tmp/iofs/lsnr.sock"
    assert fdk.listener_path("unix:///tmp/iofs/lsnr.sock") == "/tmp/iofs/lsnr.sock"
    with pytest.raises(SystemExit):
        fdk.listener_path("tcp://localhost:8080")


def test_parse_deadline_round_trips_kilns_format() -> None:
    t = 1_795_428_000.123
    parsed = fdk.parse_deadline(format_deadline(t))
    assert parsed is not None
    assert abs(parsed - t) < 0.001
    assert fdk.parse_deadline("2026-11-23T10:00:00Z") == 1_795_428_000
    assert fdk.parse_deadline("2026-11-23T11:30:00+01:30") == 1_795_428_000
    assert fdk.parse_deadline("2026-11-23T10:00:00.5-00:00") == 1_795_428_000.5
    assert fdk.parse_deadline("yesterday") is None
    assert fdk.parse_deadline(None) is None


# ---- the contract wrapping, in-process ---------------------------------------------


def request(body: bytes = b"", headers: dict[str, str] | None = None) -> fdk.Request:
    return fdk.Request("POST", "/call", "HTTP/1.1", headers or {}, body)


def test_plain_bytes_answer_is_200_with_fn_http_status() -> None:
    status, headers, body = fdk._call(lambda b, h: b"out:" + b, request(b"in"))
    assert (status, headers, body) == (200, [("Fn-Http-Status", "200")], b"out:in")


def test_log_frames_go_before_a_calls_first_output_and_not_for_a_silent_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FN_LOGFRAME_NAME", "kiln_call_id")
    monkeypatch.setenv("FN_LOGFRAME_HDR", "Fn-Call-Id")
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    fdk._frame_streams()

    def speaks(body: bytes, headers: dict[str, str]) -> bytes:
        print("said", body.decode())
        return b""

    fdk._call(speaks, request(b"one", {"fn-call-id": "A"}))
    fdk._call(lambda b, h: b"", request(b"", {"fn-call-id": "B"}))  # writes nothing
    fdk._call(speaks, request(b"two", {"fn-call-id": "C"}))
    print("between calls")  # no call: no frame
    assert out.getvalue() == (
        "\nkiln_call_id=A\nsaid one\n\nkiln_call_id=C\nsaid two\nbetween calls\n"
    )
    assert err.getvalue() == ""  # nothing written there, no frame either
    fdk._frame_streams()  # idempotent: not wrapped twice
    assert isinstance(sys.stdout, fdk.FramedStream)
    assert sys.stdout.stream is out


def test_handler_sees_the_callers_headers_under_their_own_names() -> None:
    seen: list[dict[str, str]] = []
    headers = {
        "fn-intent": "httprequest",
        "fn-http-method": "GET",
        "fn-http-h-x-echo": "from-caller",
        "x-echo": "plain",
        "content-type": "text/plain",
    }
    fdk._call(lambda b, h: seen.append(h) or b"", request(headers=headers))  # type: ignore[func-returns-value]
    assert seen[0]["x-echo"] == "from-caller"
    assert seen[0]["fn-http-method"] == "GET"
    assert seen[0]["content-type"] == "text/plain"


def test_tuple_answer_maps_status_and_headers() -> None:
    def handle(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], str]:
        return 404, {"X-Thing": "a", "Content-Type": "text/plain"}, "nope"

    status, headers, body = fdk._call(handle, request())
    assert status == 200
    assert headers == [
        ("Fn-Http-Status", "404"),
        ("Fn-Http-H-X-Thing", "a"),
        ("Content-Type", "text/plain"),
    ]
    assert body == b"nope"


def test_exception_is_502_with_last_traceback_line(capsys: pytest.CaptureFixture[str]) -> None:
    def handle(body: bytes, headers: dict[str, str]) -> bytes:
        raise KeyError("missing")

    status, _headers, body = fdk._call(handle, request())
    assert status == 502
    assert body == b"KeyError: 'missing'"
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "answer",
    [
        (99, {}, b""),  # not a final status
        ("200", {}, b""),  # not an int
        (200, {"Bad Name": "x"}, b""),
        (200, {"X-Inject": "a\r\nSet-Cookie: evil"}, b""),
        (200, {}, 42),  # not a body
        (200, b""),  # wrong tuple shape
    ],
)
def test_bad_answers_are_502(answer: object, capsys: pytest.CaptureFixture[str]) -> None:
    status, _headers, _body = fdk._call(lambda b, h: answer, request())  # type: ignore[arg-type, return-value]
    assert status == 502


def test_passed_deadline_is_504_without_calling_the_function() -> None:
    called = []
    req = request(headers={"fn-deadline": format_deadline(time.time() - 1)})
    status, _headers, _body = fdk._call(lambda b, h: called.append(1) or b"", req)  # type: ignore[func-returns-value]
    assert status == 504
    assert called == []


# ---- the FDK as a subprocess, through Kiln's client ---------------------------------------


async def test_fdk_binds_phony_socket_and_relative_symlink(fn_dir: Path, iofs: Path) -> None:
    async with function_process(fn_dir, "echo_fdk.py", iofs):
        with trio.fail_after(START_TIMEOUT):
            real = await wait_for_listener(iofs)
    assert real.parent == iofs
    assert real.name.startswith("phony")
    assert real.name.endswith(".sock")
    assert os.readlink(iofs / "lsnr.sock") == real.name
    assert stat.S_IMODE(os.lstat(real).st_mode) == 0o666


async def test_echo_maps_status_and_headers(fn_dir: Path, iofs: Path) -> None:
    async with running_function(fn_dir, "echo_fdk.py", iofs) as conn:
        resp = await conn.call(
            headers_for((b"X-Echo", b"ping"), (b"X-Status", b"418"), (b"Content-Type", b"text/x")),
            b"payload",
        )
    assert resp.status == 200
    assert resp.body == b"payload"
    assert header(resp.headers, b"fn-http-status") == b"418"
    assert header(resp.headers, b"fn-http-h-x-echo") == b"ping"
    outcome = interpret_response(resp.status, resp.headers)
    assert outcome.verdict is Verdict.OK
    assert outcome.status == 418
    assert dict(outcome.headers) == {b"x-echo": b"ping", b"content-type": b"text/x"}


async def test_function_exception_is_502_and_connection_survives(fn_dir: Path, iofs: Path) -> None:
    async with running_function(fn_dir, "echo_fdk.py", iofs) as conn:
        resp = await conn.call(headers_for((b"X-Fail", b"1")), b"")
        assert resp.status == 502
        assert resp.body == b"ValueError: asked to fail"
        assert interpret_response(resp.status, resp.headers).verdict is Verdict.FUNCTION_ERROR
        again = await conn.call(headers_for(), b"still here")
        assert (again.status, again.body) == (200, b"still here")


async def test_expired_deadline_is_504(fn_dir: Path, iofs: Path) -> None:
    async with running_function(fn_dir, "echo_fdk.py", iofs) as conn:
        resp = await conn.call(headers_for(timeout=-5), b"late")
    assert resp.status == 504
    assert interpret_response(resp.status, resp.headers).verdict is Verdict.TIMEOUT


async def test_big_body_round_trip(fn_dir: Path, iofs: Path) -> None:
    body = os.urandom(3 * 1024 * 1024)
    async with running_function(fn_dir, "echo_fdk.py", iofs) as conn:
        resp = await conn.call(headers_for(), body)
        assert resp.body == body
        empty = await conn.call(headers_for(), b"")
        assert (empty.status, empty.body) == (200, b"")


async def test_other_paths_are_404(fn_dir: Path, iofs: Path) -> None:
    async with function_process(fn_dir, "echo_fdk.py", iofs):
        with trio.fail_after(START_TIMEOUT):
            real = await wait_for_listener(iofs)
        stream = await trio.open_unix_socket(str(real))
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = await stream.receive_some(4096)
    assert data.startswith(b"HTTP/1.1 404 ")


PY38 = Path.home() / ".pyenv" / "versions"


def _old_pythons() -> list[str]:
    found = sorted(str(p) for p in PY38.glob("3.8*/bin/python3")) if PY38.is_dir() else []
    return found[:1]


@pytest.mark.parametrize("python", _old_pythons())
async def test_fdk_runs_on_python_38(fn_dir: Path, iofs: Path, python: str) -> None:
    """The FDK promises Python >= 3.8; run it there when this machine has one."""
    async with running_function(fn_dir, "echo_fdk.py", iofs, python=python) as conn:
        resp = await conn.call(headers_for((b"X-Echo", b"old")), b"py38")
        fail = await conn.call(headers_for((b"X-Fail", b"1")), b"")
    assert (resp.status, resp.body) == (200, b"py38")
    assert header(resp.headers, b"fn-http-h-x-echo") == b"old"
    assert fail.status == 502


# ---- the other test function scripts ---------------------------------------------------


async def test_raw_symlink_script(fn_dir: Path, iofs: Path) -> None:
    async with running_function(fn_dir, "raw_symlink.py", iofs) as conn:
        for i in range(3):
            resp = await conn.call(headers_for(), b"x%d" % i)
            outcome = interpret_response(resp.status, resp.headers)
            assert (outcome.verdict, outcome.status, resp.body) == (Verdict.OK, 201, b"raw:x%d" % i)
            assert dict(outcome.headers) == {b"x-raw": b"yes"}


async def test_abs_symlink_script_is_refused(fn_dir: Path, iofs: Path) -> None:
    async with function_process(fn_dir, "abs_symlink.py", iofs):
        with trio.fail_after(START_TIMEOUT), pytest.raises(ListenerInvalid, match="absolute"):
            await wait_for_listener(iofs)


async def test_answers_500_script_is_broken(fn_dir: Path, iofs: Path) -> None:
    async with running_function(fn_dir, "answers_500.py", iofs) as conn:
        resp = await conn.call(headers_for(), b"x")
    assert resp.status == 500
    assert interpret_response(resp.status, resp.headers).verdict is Verdict.BROKEN


async def test_hangs_script_never_answers(fn_dir: Path, iofs: Path) -> None:
    async with running_function(fn_dir, "hangs.py", iofs) as conn:
        with trio.move_on_after(0.3) as scope:
            await conn.call(headers_for(), b"x")
        assert scope.cancelled_caught
        assert conn.broken
        with pytest.raises(FnProtocolError):
            await conn.call(headers_for(), b"x")


async def test_never_binds_script(fn_dir: Path, iofs: Path) -> None:
    async with function_process(fn_dir, "never_binds.py", iofs):
        with trio.move_on_after(0.5) as scope:
            await wait_for_listener(iofs)
    assert scope.cancelled_caught


async def test_exits_at_start_script(fn_dir: Path, iofs: Path) -> None:
    async with function_process(fn_dir, "exits_at_start.py", iofs, capture_stderr=True) as proc:
        assert proc.stderr is not None
        err = b""
        with trio.fail_after(START_TIMEOUT):
            while chunk := await proc.stderr.receive_some():
                err += chunk
            assert await proc.wait() == 3
    assert b"cannot load model" in err
    assert not (iofs / "lsnr.sock").exists()


def test_fdk_is_standalone(fn_dir: Path) -> None:
    """It runs inside function images: stdlib only, no Kiln imports."""
    source = FDK_FILE.read_text()
    assert "import kiln" not in source
    assert "from kiln" not in source
    code = "import sys; sys.path.insert(0, sys.argv[1]); import fdk"
    probe = subprocess.run(
        [sys.executable, "-I", "-c", code, str(fn_dir)], capture_output=True, check=False
    )
    assert probe.returncode == 0, probe.stderr


def test_socket_mode_helper_sanity(iofs: Path) -> None:
    sock = fdk.bind_listener(str(iofs / "lsnr.sock"))
    try:
        target = os.readlink(iofs / "lsnr.sock")
        assert not os.path.isabs(target)
        assert stat.S_ISSOCK(os.lstat(iofs / target).st_mode)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(str(iofs / "lsnr.sock"))  # listening before the link appeared
        probe.close()
    finally:
        sock.close()
