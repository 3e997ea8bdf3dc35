"""The ``kiln`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import trio

from kiln import __version__
from kiln.config import ConfigError, load

DEFAULT_CONFIG = "/etc/kiln/config.toml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: far too chatty for a daemon's log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def cmd_daemon(args: argparse.Namespace) -> int:
    from kiln.main import FatalStartupError, run_daemon

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"kiln: bad config: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok ({len(config.functions)} function(s))")
        return 0
    _setup_logging(config.daemon.log_level)
    try:
        trio.run(run_daemon, config)
    except FatalStartupError as e:
        logging.getLogger("kiln").error("cannot start: %s", e)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    import httpx

    body = sys.stdin.buffer.read() if not sys.stdin.isatty() else b""
    try:
        response = httpx.post(
            f"{args.url.rstrip('/')}/invoke/{args.name}", content=body, timeout=None
        )
    except httpx.HTTPError as e:
        print(f"kiln: cannot reach kiln at {args.url}: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()
    if response.status_code >= 400:
        print(f"kiln: HTTP {response.status_code}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kiln", description="Kiln: a function runner on Docker.")
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("daemon", help="run the daemon")
    p.add_argument(
        "--config", "-c", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})"
    )
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.set_defaults(func=cmd_daemon)

    p = sub.add_parser("invoke", help="invoke a function (body from stdin)")
    p.add_argument("name")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the invoke API")
    p.set_defaults(func=cmd_invoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
