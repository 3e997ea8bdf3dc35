"""Function lines in the daemon's own log: journald's native protocol, else stderr.

Under systemd (``$JOURNAL_STREAM`` names our stderr and the journal socket
exists) each line is one datagram to ``/run/systemd/journal/socket`` carrying
structured fields, so ``journalctl KILN_FUNCTION=echo`` or
``journalctl KILN_CALL_ID=…`` finds them:

    MESSAGE=echo call=5f2c… stderr: the text    PRIORITY=6 (stdout) / 5 (stderr)
    SYSLOG_IDENTIFIER=kiln  KILN_FUNCTION  KILN_CALL_ID  KILN_CONTAINER  KILN_STREAM

Elsewhere lines go to stderr in the daemon's log format, as
``… INFO kiln.fn: fn=NAME call=ID container=… stream: text``, one write per
batch. The socket is non-blocking: when journald cannot keep up, lines are
counted as dropped instead of stalling the daemon (they are still in the
in-memory store).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from kiln.logs.lines import STDERR, LogLine

JOURNAL_SOCKET = "/run/systemd/journal/socket"

log = logging.getLogger("kiln.fn")


class Forwarder(Protocol):
    def send(self, lines: Sequence[LogLine]) -> None: ...

    def close(self) -> None: ...


def encode_field(key: str, value: str) -> bytes:
    """One field of the native protocol: ``KEY=value\\n``, or the binary form
    (``KEY\\n`` + little-endian 64-bit length + value + ``\\n``) when the value
    holds a newline."""
    raw = value.encode("utf-8", "replace")
    if b"\n" in raw:
        return key.encode() + b"\n" + struct.pack("<Q", len(raw)) + raw + b"\n"
    return key.encode() + b"=" + raw + b"\n"


def encode_entry(fields: Sequence[tuple[str, str]]) -> bytes:
    return b"".join(encode_field(k, v) for k, v in fields)


def line_fields(line: LogLine) -> list[tuple[str, str]]:
    fields = [
        ("MESSAGE", f"{line.function} call={line.call or '-'} {line.stream}: {line.text}"),
        ("PRIORITY", "5" if line.stream == STDERR else "6"),
        ("SYSLOG_IDENTIFIER", "kiln"),
        ("KILN_FUNCTION", line.function),
        ("KILN_CONTAINER", line.container),
        ("KILN_STREAM", line.stream),
    ]
    if line.call:
        fields.append(("KILN_CALL_ID", line.call))
    return fields


def under_journald(env: Mapping[str, str], stderr_fd: int = 2) -> bool:
    """systemd sets ``JOURNAL_STREAM=DEV:INO`` of the stream it connected to our
    stderr; it only counts while stderr is still that stream."""
    value = env.get("JOURNAL_STREAM")
    if not value:
        return False
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stderr_fd)
    except OSError:
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class JournalForwarder:
    """Native protocol over a connected, non-blocking datagram socket."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.dropped = 0
        self._warned = False

    def send(self, lines: Sequence[LogLine]) -> None:
        # One datagram per entry: the protocol has no batches.
        for line in lines:
            try:
                self.sock.send(encode_entry(line_fields(line)))
            except BlockingIOError:
                self.dropped += 1
            except OSError as e:
                self.dropped += 1
                if not self._warned and e.errno not in (errno.EAGAIN,):
                    self._warned = True
                    log.warning("cannot send function lines to journald at %s: %s", self.path, e)

    def close(self) -> None:
        self.sock.close()


def stderr_line(asctime: str, line: LogLine) -> str:
    """The daemon's log format (``%(asctime)s %(levelname)s %(name)s: %(message)s``)."""
    return (
        f"{asctime} INFO kiln.fn: fn={line.function} call={line.call or '-'} "
        f"container={line.container} {line.stream}: {line.text}\n"
    )


class StderrForwarder:
    """To the daemon's stderr in its log format, a batch per write (when the
    ``kiln.fn`` logger is enabled for INFO, as Python logging would decide)."""

    def __init__(self, fd: int = 2) -> None:
        self.fd = fd
        self.failed = False

    def send(self, lines: Sequence[LogLine]) -> None:
        if self.failed or not log.isEnabledFor(logging.INFO):
            return
        now = time.time()
        asctime = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"
        )
        data = "".join([stderr_line(asctime, line) for line in lines]).encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except BlockingIOError:
            pass  # a full non-blocking pipe: the lines are in the store
        except OSError:
            self.failed = True  # stderr is gone: nowhere to report it either

    def close(self) -> None:
        pass


class NoForwarder:
    def send(self, lines: Sequence[LogLine]) -> None:
        pass

    def close(self) -> None:
        pass


def open_forwarder(
    mode: str, env: Mapping[str, str] | None = None, socket_path: str = JOURNAL_SOCKET
) -> Forwarder:
    """``auto``: journald when running under it, else stderr; ``journal``: journald's
    socket (an error if it is missing); ``stderr``; ``off``."""
    env = os.environ if env is None else env
    if mode == "off":
        return NoForwarder()
    if mode == "stderr":
        return StderrForwarder()
    if mode == "journal" or (under_journald(env) and os.path.exists(socket_path)):
        try:
            return JournalForwarder(socket_path)
        except OSError as e:
            if mode == "journal":
                raise
            log.warning("journald socket %s: %s; function lines go to stderr", socket_path, e)
    return StderrForwarder()
