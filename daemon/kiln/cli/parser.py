"""The ``kiln`` command's arguments, and ``main``, the console script."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kiln import __version__
from kiln.cli.client import DEFAULT_SOCKET
from kiln.cli.commands import (
    cmd_call,
    cmd_calls,
    cmd_deploy,
    cmd_drain,
    cmd_invoke,
    cmd_logs,
    cmd_ls,
    cmd_reload,
    cmd_rm,
    cmd_scale,
    cmd_show,
    cmd_status,
    cmd_token_create,
    cmd_token_ls,
    cmd_token_rm,
)
from kiln.cli.daemon import DEFAULT_CONFIG, cmd_daemon
from kiln.cli.output import CliError


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

    socket_help = f"control socket (default $KILN_SOCKET or {DEFAULT_SOCKET})"
    # The client's options go before or after the subcommand: `kiln -s X ls` or `kiln ls -s X`.
    parser.add_argument("--socket", "-s", help=socket_help)
    parser.add_argument("--json", action="store_true", help="JSON output for scripts")

    def client(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--socket", "-s", default=argparse.SUPPRESS, help=socket_help)
        p.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="JSON output for scripts"
        )
        return p

    client("status", "daemon status").set_defaults(func=cmd_status)
    client("ls", "list functions").set_defaults(func=cmd_ls)
    p = client("show", "one function and its containers")
    p.add_argument("name")
    p.set_defaults(func=cmd_show)
    p = client("deploy", "deploy or update functions from a TOML file or Fn's func.yaml")
    p.add_argument("file")
    p.set_defaults(func=cmd_deploy)
    p = client("rm", "remove a function")
    p.add_argument("name")
    p.set_defaults(func=cmd_rm)
    p = client("scale", "change min_warm / max_containers")
    p.add_argument("name")
    p.add_argument("--min-warm", type=int)
    p.add_argument("--max", type=int, help="max_containers")
    p.set_defaults(func=cmd_scale)
    p = client("invoke", "invoke a function (body from stdin, answer to stdout)")
    p.add_argument("name")
    p.add_argument(
        "-H", "--header", action="append", default=[], help="a request header 'Name: value'"
    )
    p.add_argument("--content-type", help="the body's Content-Type")
    p.add_argument(
        "-i", "--include", action="store_true", help="show the status, headers and call id"
    )
    p.set_defaults(func=cmd_invoke)
    p = client("calls", "async calls, newest first")
    p.add_argument("--function", help="only this function's")
    p.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_calls)
    p = client("call", "one async call (--wait: until done, then print its result)")
    p.add_argument("id")
    p.add_argument("--wait", action="store_true", help="wait until it is done; print the result")
    p.set_defaults(func=cmd_call)
    p = client("logs", "a function's log lines (like docker logs)")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--call", help="only the lines of this call id")
    p.add_argument("--since", help="only lines since: 90s, 10m, 2h, 1d ago, or an RFC 3339 time")
    p.add_argument("-n", "--tail", type=int, help="only the last N lines")
    p.set_defaults(func=cmd_logs)
    p = sub.add_parser("token", help='invoke API tokens (auth = "token")')
    tsub = p.add_subparsers(dest="token_command", required=True)

    def token_cmd(name: str, help: str) -> argparse.ArgumentParser:
        tp = tsub.add_parser(name, help=help)
        tp.add_argument(
            "--socket", "-s", help=f"control socket (default $KILN_SOCKET or {DEFAULT_SOCKET})"
        )
        tp.add_argument("--json", action="store_true", help="JSON output for scripts")
        return tp

    tp = token_cmd("create", "make a token (shown once)")
    tp.add_argument("--name", help="a name for it (default token-N)")
    tp.add_argument(
        "--function", "-F", action="append", help="limit it to this function (repeatable)"
    )
    tp.set_defaults(func=cmd_token_create)
    tp = token_cmd("ls", "list tokens (never their secrets)")
    tp.set_defaults(func=cmd_token_ls)
    tp = token_cmd("rm", "revoke a token by id or name")
    tp.add_argument("token")
    tp.set_defaults(func=cmd_token_rm)
    client("drain", "finish calls in flight, then stop the daemon").set_defaults(func=cmd_drain)
    client("reload", "re-read the config file").set_defaults(func=cmd_reload)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as e:
        print(f"kiln: {e}", file=sys.stderr)
        return 1
    return code
