"""Requests to the daemon's control socket (HTTP over a Unix socket)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from kiln.cli.output import CliError

if TYPE_CHECKING:
    import httpx

DEFAULT_SOCKET = "/run/kiln/control.sock"


def socket_path(args: argparse.Namespace) -> str:
    return str(args.socket or os.environ.get("KILN_SOCKET") or DEFAULT_SOCKET)


def request(
    args: argparse.Namespace,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    content: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    check: bool = True,
) -> Any:
    import httpx

    sock = socket_path(args)
    try:
        with connect(sock) as client:
            response = client.request(
                method, path, json=json_body, content=content, headers=headers
            )
    except (httpx.ConnectError, FileNotFoundError, PermissionError) as e:
        raise CliError(f"cannot reach kiln at {sock}: is the service running? ({e})") from e
    except httpx.HTTPError as e:
        raise CliError(f"talking to kiln at {sock}: {e}") from e
    if check and response.status_code >= 400:
        raise http_error(response, strip=True)
    return response


def connect(sock: str) -> httpx.Client:
    """A client for the daemon's control socket (no timeout: --wait and -f take long)."""
    import httpx

    return httpx.Client(
        transport=httpx.HTTPTransport(uds=sock), base_url="http://kiln", timeout=None
    )


def http_error(response: httpx.Response, *, strip: bool) -> CliError:
    """An error answer (its body read) as one line: the daemon's message and code,
    else the status and the start of the body."""
    try:
        err = response.json()["error"]
        return CliError(f"{err['message']} ({err['code']}, HTTP {response.status_code})")
    except (ValueError, KeyError, TypeError):
        text = response.text.strip() if strip else response.text
        return CliError(f"HTTP {response.status_code}: {text[:300]}")
