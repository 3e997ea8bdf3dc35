"""The ``kiln`` command line: the daemon, and a client for its control socket.

The client finds the daemon by ``--socket PATH``, else ``$KILN_SOCKET``, else
``/run/kiln/control.sock``. Output is a human table by default, JSON with
``--json``; failures exit non-zero with a one-line reason.

The parts: :mod:`.parser` (the arguments, ``main``), :mod:`.daemon` (``kiln
daemon``), :mod:`.client` (requests to the control socket), :mod:`.commands`
(the client's commands), :mod:`.deployfile` (the files ``kiln deploy`` reads)
and :mod:`.output` (tables, JSON, the one-line failure).
"""

from kiln.cli.deployfile import read_deploy_file
from kiln.cli.output import CliError
from kiln.cli.parser import build_parser, main

__all__ = ["CliError", "build_parser", "main", "read_deploy_file"]
