"""The client's commands: each asks the control socket and prints the answer."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kiln.cli.client import connect, http_error, request, socket_path
from kiln.cli.deployfile import read_deploy_file
from kiln.cli.output import CliError, emit, table, when
from kiln.units import format_size


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
            "created": when(c["created"]),
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
            f"created {when(c['created'])}  started {when(c['started'])}  "
            f"finished {when(c['finished'])}  host {c.get('host') or '-'}",
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
            connect(sock) as client,
            client.stream(
                "GET", f"/functions/{args.name}/logs", params=params, headers={"Accept": accept}
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise http_error(response, strip=False)
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
