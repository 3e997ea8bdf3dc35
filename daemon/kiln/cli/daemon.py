"""``kiln daemon``: check a config, or run the daemon in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

import trio

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
