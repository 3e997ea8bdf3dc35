"""The ``kiln`` command line: the daemon, and a client for its control socket.

The client finds the daemon by ``--socket PATH``, else ``$KILN_SOCKET``, else
``/run/kiln/control.sock``. Output is a human table by default, JSON with
``--json``; failures exit non-zero with a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import trio

from kiln import __version__
from kiln.config import ConfigError, load, read_toml
from kiln.functions.fnyaml import is_fn_yaml, load_fn_yaml
from kiln.functions.spec import parse_function
from kiln.units import format_size

DEFAULT_CONFIG = "/etc/kiln/config.toml"
DEFAULT_SOCKET = "/run/kiln/control.sock"


class CliError(Exception):
    """A one-line reason to print before exiting non-zero."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: far too chatty for a daemon's log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


# ---- the daemon --------------------------------------------------------------


def cmd_daemon(args: argparse.Namespace) -> int:
    from kiln.main import FatalStartupError, check_functions_fit, host_policy, run_daemon

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"kiln: bad config: {e}", file=sys.stderr)
        return 2
    if args.check:
        # The same checks the daemon makes before it starts, against this host.
        policy = host_policy(config)
        try:
            check_functions_fit(config.functions.values(), policy)
        except FatalStartupError as e:
            print(f"kiln: bad config: {e}", file=sys.stderr)
            return 2
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


# ---- the client ----------------------------------------------------------------


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
        with httpx.Client(
            transport=httpx.HTTPTransport(uds=sock), base_url="http://kiln", timeout=None
        ) as client:
            response = client.request(
                method, path, json=json_body, content=content, headers=headers
            )
    except (httpx.ConnectError, FileNotFoundError, PermissionError) as e:
        raise CliError(f"cannot reach kiln at {sock}: is the service running? ({e})") from e
    except httpx.HTTPError as e:
        raise CliError(f"talking to kiln at {sock}: {e}") from e
    if check and response.status_code >= 400:
        try:
            err = response.json()["error"]
            raise CliError(f"{err['message']} ({err['code']}, HTTP {response.status_code})")
        except (ValueError, KeyError, TypeError):
            raise CliError(f"HTTP {response.status_code}: {response.text.strip()[:300]}") from None
    return response


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def emit(args: argparse.Namespace, data: Any, human: str) -> None:
    print(json.dumps(data, indent=2) if args.json else human)


def cmd_status(args: argparse.Namespace) -> int:
    s = request(args, "GET", "/status").json()
    mem = s["memory"]
    containers = ", ".join(f"{n} {k}" for k, n in sorted(s["containers"].items())) or "none"
    human = "\n".join(
        [
            f"kiln {s['version']}, up {s['uptime']:.0f} s{'  (DRAINING)' if s['draining'] else ''}",
            f"memory     {format_size(mem['reserved'])} of {format_size(mem['total'])} reserved",
            f"queue      {s['queue']['memory_waiting']} waiting for memory",
            f"functions  {s['functions']}",
            f"containers {containers}",
            f"docker     {s['docker']['socket']} ({'reachable' if s['docker']['reachable'] else 'UNREACHABLE'})",
            *async_status(s.get("async")),
        ]
    )
    emit(args, s, human)
    return 0


def async_status(a: dict[str, Any] | None) -> list[str]:
    if not a:
        return []
    age = a.get("oldest_due_age")
    behind = f", oldest due waiting {age:.1f} s" if age else ""
    return [
        f"async      {a['queued']} queued, {a['running']} running ({a['store']}, host {a['host']}"
        f"{behind}); here: {a['accepted']} accepted, {a['succeeded']} succeeded, "
        f"{a['failed']} failed, {a['retried']} retried"
    ]


def cmd_calls(args: argparse.Namespace) -> int:
    from urllib.parse import urlencode

    query = {"limit": str(args.limit)}
    if args.function:
        query["function"] = args.function
    if args.state:
        query["state"] = args.state
    data = request(args, "GET", f"/calls?{urlencode(query)}").json()
    rows = [
        {
            "id": c["id"],
            "function": c["function"],
            "state": c["state"],
            "attempts": c["attempts"],
            "status": c.get("status", ""),
            "created": _when(c["created"]),
            "host": c.get("host") or "",
        }
        for c in data["calls"]
    ]
    emit(
        args,
        data,
        table(rows, ["id", "function", "state", "attempts", "status", "created", "host"]),
    )
    return 0


def _when(epoch: float | None) -> str:
    import datetime

    if epoch is None:
        return ""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cmd_call(args: argparse.Namespace) -> int:
    import base64

    path = f"/calls/{args.id}"
    while True:
        # With --wait the daemon holds each request until the call finishes (or a
        # minute passes), so this loop turns once a minute at most.
        c = request(args, "GET", f"{path}?wait=60" if args.wait else path).json()
        if not args.wait or c["state"] in ("succeeded", "failed", "cancelled"):
            break
    if args.json:
        print(json.dumps(c, indent=2))
    else:
        lines = [
            f"{c['id']}  {c['function']}  {c['state']}  attempts {c['attempts']}",
            f"created {_when(c['created'])}  started {_when(c['started'])}  "
            f"finished {_when(c['finished'])}  host {c.get('host') or '-'}",
        ]
        if c.get("error"):
            lines.append(f"error: {c['error']}")
        print("\n".join(lines), file=sys.stderr if args.wait else sys.stdout)
        result = c.get("result")
        if args.wait and result is not None:
            if "body_base64" in result:
                sys.stdout.buffer.write(base64.b64decode(result["body_base64"]))
            else:
                sys.stdout.write(result["body"])
            sys.stdout.flush()
    return 0 if c["state"] != "failed" else 1


def cmd_ls(args: argparse.Namespace) -> int:
    rows = request(args, "GET", "/functions").json()
    for r in rows:
        r["memory"] = format_size(r["memory"])
        r["warm/max"] = f"{r['min_warm']}/{r['max_containers']}"
    emit(
        args,
        rows,
        table(
            rows, ["name", "format", "image", "memory", "warm/max", "containers", "idle", "busy"]
        ),
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    info = request(args, "GET", f"/functions/{args.name}").json()
    spec = info["spec"]
    lines = [f"{info['name']}  ({info['source']})"]
    for k, v in sorted(spec.items()):
        if k == "memory":
            v = format_size(v)
        if k == "env":
            lines.append(f"  {k:15} {'' if v else '(none)'}".rstrip())
            lines += [f"    {name}={value}" for name, value in sorted(v.items())]
        else:
            lines.append(f"  {k:15} {v}")
    stats = info.get("stats") or {}
    if stats.get("consecutive_failures"):
        lines.append(
            f"restart backoff: {stats['consecutive_failures']} failed start(s) in a row; "
            f"the next min_warm start in {stats.get('restart_in', 0):.0f} s"
        )
    lines.append("containers:")
    rows = [
        {
            **c,
            "id": (c["id"] or "")[:12],
            "age": f"{c['age']:.0f}s",
            "idle_for": "" if c["idle_for"] is None else f"{c['idle_for']:.0f}s",
        }
        for c in info["containers"]
    ]
    lines.append(table(rows, ["name", "id", "state", "age", "idle_for", "calls"]))
    emit(args, info, "\n".join(lines))
    return 0


def read_deploy_file(path: str) -> dict[str, dict[str, Any]]:
    """A TOML file with ``[functions.NAME]`` tables, or one function with ``name = "..."``;
    or Fn's ``func.yaml`` (a ``.yaml``/``.yml`` file)."""
    if is_fn_yaml(path):
        try:
            fn = load_fn_yaml(path)  # the daemon checks again
        except ConfigError as e:
            raise CliError(str(e)) from e
        for note in fn.notes():
            print(f"kiln: {path}: {note}", file=sys.stderr)
        return {fn.name: fn.table}
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
        raw = read_toml(text, path)
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise CliError(f"{path}: not UTF-8 text: {e.reason} at byte {e.start}") from e
    except ConfigError as e:
        raise CliError(str(e)) from e
    if "functions" in raw:
        fns = raw["functions"]
        if not isinstance(fns, dict) or set(raw) != {"functions"}:
            raise CliError(f"{path}: put functions under [functions.NAME] and nothing else")
        out = dict(fns)
    else:
        name = raw.pop("name", None)
        if not isinstance(name, str):
            raise CliError(
                f'{path}: give the function a name (name = "...") or use [functions.NAME]'
            )
        out = {name: raw}
    for name, spec in out.items():
        try:
            parse_function(name, spec, f"functions.{name}")  # the daemon checks again
        except ConfigError as e:
            raise CliError(f"{path}: {e}") from e
    return out


def cmd_deploy(args: argparse.Namespace) -> int:
    results = []
    for name, spec in read_deploy_file(args.file).items():
        response = request(args, "PUT", f"/functions/{name}", json_body=spec)
        results.append(response.json())
        for warning in response.json().get("warnings", []):
            print(f"kiln: warning: {warning}", file=sys.stderr)
        if not args.json:
            print(f"{'created' if response.status_code == 201 else 'updated'} {name}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    data = request(args, "DELETE", f"/functions/{args.name}").json()
    emit(args, data, f"removed {args.name}")
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    body: dict[str, int] = {}
    if args.min_warm is not None:
        body["min_warm"] = args.min_warm
    if args.max is not None:
        body["max_containers"] = args.max
    if not body:
        raise CliError("give --min-warm and/or --max")
    spec = request(args, "POST", f"/functions/{args.name}/scale", json_body=body).json()
    emit(
        args,
        spec,
        f"{args.name}: min_warm={spec['min_warm']} max_containers={spec['max_containers']}",
    )
    return 0


def parse_header(text: str) -> tuple[str, str]:
    """``-H 'Name: value'`` → (name, value), as curl reads it."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or name != name.strip():
        raise CliError(f"-H {text!r}: give a header as 'Name: value'")
    return name, value.strip()


def cmd_invoke(args: argparse.Namespace) -> int:
    body = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    headers = [parse_header(h) for h in args.header]
    if args.content_type:
        headers.append(("Content-Type", args.content_type))
    response = request(
        args,
        "POST",
        f"/functions/{args.name}/invoke",
        content=body,
        headers=headers,
        check=not args.include,
    )
    out = sys.stdout.buffer
    if args.include:  # like curl -i: the status line and headers, then the body
        head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
        head += [f"{k}: {v}" for k, v in response.headers.items()]
        out.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace"))
    out.write(response.content)
    sys.stdout.flush()
    return 1 if response.status_code >= 400 else 0


def cmd_logs(args: argparse.Namespace) -> int:
    """Like ``docker logs`` / ``journalctl -u``: text lines, NDJSON with --json; -f follows."""
    import httpx

    params: dict[str, str] = {}
    if args.call:
        params["call"] = args.call
    if args.since:
        params["since"] = args.since
    if args.tail is not None:
        params["tail"] = str(args.tail)
    if args.follow:
        params["follow"] = "1"
    accept = "application/x-ndjson" if args.json else "text/plain"
    sock = socket_path(args)
    try:
        with (
            httpx.Client(
                transport=httpx.HTTPTransport(uds=sock), base_url="http://kiln", timeout=None
            ) as client,
            client.stream(
                "GET", f"/functions/{args.name}/logs", params=params, headers={"Accept": accept}
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                try:
                    err = response.json()["error"]
                    raise CliError(f"{err['message']} ({err['code']}, HTTP {response.status_code})")
                except (ValueError, KeyError, TypeError):
                    raise CliError(f"HTTP {response.status_code}: {response.text[:300]}") from None
            out = sys.stdout.buffer
            for chunk in response.iter_raw():
                out.write(chunk)
                out.flush()
    except (httpx.ConnectError, FileNotFoundError, PermissionError) as e:
        raise CliError(f"cannot reach kiln at {sock}: is the service running? ({e})") from e
    except httpx.HTTPError as e:
        if args.follow:
            return 0  # the daemon stopped: following ends
        raise CliError(f"talking to kiln at {sock}: {e}") from e
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "functions": args.function or None}
    data = request(args, "POST", "/tokens", json_body=body).json()
    scope = ", ".join(data["functions"]) if data["functions"] else "all functions"
    emit(
        args,
        data,
        f"{data['token']}\n(token {data['name']} [{data['id']}] for {scope}: shown only now, "
        "keep it; callers send it as 'Authorization: Bearer <token>')",
    )
    return 0


def cmd_token_ls(args: argparse.Namespace) -> int:
    rows = request(args, "GET", "/tokens").json()
    for r in rows:
        r["scope"] = ", ".join(r["functions"]) if r["functions"] else "all functions"
    emit(args, rows, table(rows, ["id", "name", "scope", "created"]))
    return 0


def cmd_token_rm(args: argparse.Namespace) -> int:
    data = request(args, "DELETE", f"/tokens/{args.token}").json()
    emit(args, data, f"revoked {data['revoked']['name']} [{data['revoked']['id']}]")
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    emit(
        args,
        request(args, "POST", "/drain").json(),
        "draining: calls in flight finish, then kiln exits",
    )
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    r = request(args, "POST", "/reload").json()
    human = (
        f"reloaded: added {', '.join(r['added']) or '-'}; changed {', '.join(r['changed']) or '-'}; "
        f"removed {', '.join(r['removed']) or '-'}"
    )
    if r["ignored_sections"]:
        human += f"\n(changes to [{'], ['.join(r['ignored_sections'])}] need a restart)"
    emit(args, r, human)
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


if __name__ == "__main__":
    sys.exit(main())
