"""``swarmgate agents``: list, show, register, init (a documented sample agents file)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from gateway.cli._format import (
    CommandError,
    UsageError,
    _text,
    describe_problem,
    key_values,
    print_json,
    table,
)
from gateway.sdk.client import Client, GatewayError

# -- agents ---------------------------------------------------------------------------------


def _op_names(agent: dict[str, Any]) -> str:
    ops = agent.get("operations") or []
    names = [str(o.get("name")) for o in ops] if isinstance(ops, list) else sorted(ops)
    return ", ".join(names) or "-"


async def agents_list(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    agents = await gw.agents()
    if args.json:
        print_json({"agents": agents}, out)
        return
    if not agents:
        print("no agents registered", file=out)
        return
    rows = [
        [
            str(a.get("name")),
            str(a.get("version", "-")),
            str(a.get("registryVersion", "-")),
            str(a.get("endpoint", "-")),
            _op_names(a),
        ]
        for a in agents
    ]
    table(["NAME", "VERSION", "REGISTRY", "ENDPOINT", "OPERATIONS"], rows, out)


async def agents_show(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    agent = await gw.agent(args.name)
    if args.json:
        print_json(agent, out)
        return
    key_values(
        [
            ("name", _text(agent.get("name"))),
            ("endpoint", _text(agent.get("endpoint"))),
            ("adapter", _text(agent.get("adapter"))),
            ("version", _text(agent.get("version"))),
            ("registry version", _text(agent.get("registryVersion"))),
            ("description", _text(agent.get("description"))),
        ],
        out,
    )
    ops = agent.get("operations") or []
    if not ops:
        print("\nno operations", file=out)
        return
    print("\noperations:", file=out)
    rows = []
    for o in ops:
        retry = o.get("retry") or {}
        rows.append(
            [
                str(o.get("name")),
                _text(o.get("timeout_s")),
                _text(o.get("attempt_timeout_s")),
                _text(retry.get("max_attempts")) if retry.get("max_attempts") else "unlimited",
                "yes" if o.get("input_schema") else "no",
                _text(o.get("description")),
            ]
        )
    table(["OPERATION", "TIMEOUT_S", "ATTEMPT_S", "ATTEMPTS", "SCHEMA", "DESCRIPTION"], rows, out)


def load_agent_file(path: str) -> list[dict[str, Any]]:
    """One agent, a list of agents, or ``{"agents": [...]}`` from a JSON or YAML file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.endswith((".yaml", ".yml")):
            data: Any = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "YAML" if path.endswith((".yaml", ".yml")) else "JSON"
        raise UsageError(f"{path} is not valid {kind}: {exc}") from exc
    if isinstance(data, dict) and "agents" in data and "name" not in data:
        data = data["agents"]
    items = [data] if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise UsageError(f"{path} must hold an agent, a list of agents or {{agents: [...]}}")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item or "endpoint" not in item:
            raise UsageError(f"{path}: agent #{i + 1} needs at least a name and an endpoint")
    return items


async def agents_register(gw: Client, args: argparse.Namespace, out: TextIO) -> None:
    items = load_agent_file(args.file)
    done: list[dict[str, Any]] = []
    for item in items:
        try:
            done.append(await gw.register(item))
        except GatewayError as err:
            if done:
                names = ", ".join(str(d.get("name")) for d in done)
                print(f"registered before the error: {names}", file=sys.stderr)
            raise CommandError(f"agent {item.get('name')!r}: {describe_problem(err)}") from err
    if args.json:
        print_json({"agents": done}, out)
        return
    for d in done:
        ops = _op_names(d)
        print(
            f"registered {d.get('name')} (registry version {d.get('registryVersion')}, "
            f"operations: {ops})",
            file=out,
        )


# -- agents init --------------------------------------------------------------------------------

SAMPLE_AGENTS = """\
# swarmgate agents file: register with `swarmgate agents register {name}`, or have the gateway
# register it at every start with SWARMGATE_AGENTS_FILE={name}.
# It holds one agent, a list of agents, or (as here) {{agents: [...]}}; JSON works too.
# The schema is spec/schemas/agent-registration.json (GET the gateway's /api/agents/NAME to see
# what it stored).
agents:
  - name: hello                    # the {{agent}} of /nexus/{{agent}}/{{operation}}
    endpoint: http://127.0.0.1:9000  # the gateway POSTs {{endpoint}}/{{operation}}; private and
                                     # loopback addresses need SWARMGATE_ALLOW_CIDRS on the gateway
    adapter: http                  # http (Nexus-style HTTP, plain webhooks too); a2a (A2A)
    version: "1"                   # your version label; the gateway adds registryVersion
    description: says hello
    operations:
      - name: greet
        description: 'answers {{"greeting": "hello, NAME"}}'
        input_schema:              # JSON Schema (2020-12) of the input; null: any body
          type: object
          required: [name]
          properties:
            name: {{type: string}}
        output_schema: null        # JSON Schema the agent's result must match; null: any
        timeout_s: 3600            # schedule-to-close: the operation fails after this long
        attempt_timeout_s: 10      # one request to the agent
        retry:                     # retryable failures (connection errors, 5xx, 429) back off
          initial_s: 1
          max_s: 60
          multiplier: 2
          jitter_s: 1
          max_attempts: null       # null: retry until timeout_s
        concurrency: null          # at most this many attempts in flight at once; null: no limit
"""


def agents_init(args: argparse.Namespace, out: TextIO) -> None:
    path = Path(args.file)
    if path.exists() and not args.force:
        raise UsageError(f"{path} exists; pass --force to overwrite it")
    try:
        path.write_text(SAMPLE_AGENTS.format(name=args.file))
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    print(f"wrote {path}: edit it, then `swarmgate agents register {path}`", file=out)
