"""Chaos test for swarmgate: ``python -m tests.chaos [--short|--long] ...``.

N gateway replicas (subprocesses) share one throw-away PostgreSQL; a seeded load of
operations runs against agents that fail, hang and answer slowly, while replicas are
SIGKILLed and restarted, PostgreSQL is restarted once and the callback receiver goes away for
a while. After a drain phase the run checks: nothing lost, no duplicate operation per request
id, exactly one terminal state each, no duplicate agent effect, every callback delivered with
one stable webhook-id, nothing stuck past its timeout. Exit code 0 = all checks passed,
1 = violations, 2 = the harness itself failed.
"""

from tests.chaos.harness import ChaosConfig, preset, run

__all__ = ["ChaosConfig", "preset", "run"]
