"""``swarmgate`` command line.

Server side: ``serve``, ``migrate`` and ``token`` (mint a dev HS256 JWT). Client side, over HTTP
to the gateway at ``--url`` (``SWARMGATE_URL``) with ``--token`` (``SWARMGATE_TOKEN``):

    swarmgate call AGENT OP --input JSON|@FILE [--wait] | start AGENT OP --input ...
    swarmgate agents list | show NAME | register FILE | init [FILE]
    swarmgate ops list [--state S] [--service NAME] [--limit N] | watch [--count N]
    swarmgate ops show ID | history ID [--follow] | cancel ID | redrive ID [--callback DELIVERY]
    swarmgate completion bash|zsh | --version

``serve`` that cannot start (busy port, database down, bad setting) prints one line and exits
non-zero.

Every read command takes ``--json`` for machine output. Exit codes: 0 ok, 1 the gateway refused
the request or could not be reached (the problem+json detail goes to stderr), 2 usage errors.
"""

from gateway.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
