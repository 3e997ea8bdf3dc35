"""A tiny Python FDK for Kiln's (and Fn's) ``http-stream`` contract. Stdlib only.

Copy this one file into your function's image next to your code::

    import fdk

    def handle(body: bytes, headers: dict) -> bytes:
        return b"hello " + body

    if __name__ == "__main__":
        fdk.serve(handle)

``handle`` gets the request body and headers (lower-case names) and returns
the response body, or a tuple ``(status, headers_dict, body)``. An exception
becomes a 502 with the error's last line. The FDK binds ``phony<random>.sock``
in the dir of ``FN_LISTENER``, makes it world-writable, then symlinks
``lsnr.sock`` to it (relatively), which is how Kiln knows it is ready.
"""

from __future__ import annotations

import http.server
import os
import secrets
import socketserver
import sys
import traceback
from typing import Any, Callable, Dict, Tuple, Union  # noqa: UP035  (runs on Python >= 3.8)

Result = Union[bytes, str, Tuple[int, Dict[str, str], Union[bytes, str]]]  # noqa: UP006, UP007
Handler = Callable[[bytes, Dict[str, str]], Result]  # noqa: UP006


def _to_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _make_request_handler(handle: Handler) -> type[http.server.BaseHTTPRequestHandler]:
    class CallHandler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: Kiln logs calls
            pass

        def address_string(self) -> str:  # Unix sockets have no client address
            return "kiln"

        def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path != "/call":
                self._reply(404, {}, b"not found")
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                result = handle(body, headers)
            except Exception as e:
                last = traceback.format_exception_only(type(e), e)[-1].strip()
                print(traceback.format_exc(), file=sys.stderr, flush=True)
                self._reply(502, {"Content-Type": "text/plain"}, last.encode())
                return
            status: int = 200
            out_headers: dict[str, str] = {}
            out: Any = result
            if isinstance(result, tuple):
                status, out_headers, out = result
            fn_headers = {"Fn-Http-Status": str(status)}
            for k, v in out_headers.items():
                if k.lower() == "content-type":
                    fn_headers["Content-Type"] = v
                else:
                    fn_headers["Fn-Http-H-" + k] = v
            self._reply(200, fn_headers, _to_bytes(out))

    return CallHandler


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


def listener_dir() -> str:
    listener = os.environ.get("FN_LISTENER", "")
    if not listener.startswith("unix:"):
        raise SystemExit(f"fdk: FN_LISTENER must be unix:/path, got {listener!r}")
    return os.path.dirname(listener[len("unix:") :])


def serve(handle: Handler) -> None:
    """Bind the listener (phony socket + relative symlink) and serve calls forever."""
    directory = listener_dir()
    phony = f"phony{secrets.token_hex(4)}.sock"
    phony_path = os.path.join(directory, phony)
    server = _UnixServer(phony_path, _make_request_handler(handle))
    os.chmod(phony_path, 0o666)
    os.symlink(phony, os.path.join(directory, "lsnr.sock"))
    try:
        server.serve_forever()
    finally:
        server.server_close()
