"""The readable table printed after a run (the JSON holds everything)."""

from __future__ import annotations

from typing import Any


def _mb(kb: Any) -> str:
    return f"{kb / 1024:.0f}" if isinstance(kb, int | float) else "?"


def _ms(v: Any) -> str:
    if not isinstance(v, int | float):
        return "-"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _pct(v: Any) -> str:
    return f"{v:.0f}" if isinstance(v, int | float) else "-"


def _ratio(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, int | float) else "-"


HEADER = (
    f"{'target':<14}{'scenario':<10}{'mode':<12}{'ops/s':>8}"
    f"{'p50':>8}{'p95':>8}{'p99':>8}{'e2e p50':>9}{'e2e p99':>9}{'err':>6}"
    f"{'gw%':>6}{'ag%':>5}{'hn%':>5}{'pg%':>5}{'sys%':>6}{'gw us':>7}{'box us':>7}{'RSS MB':>11}"
)


def scenario_rows(target: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    for scenario, modes in target.get("scenarios", {}).items():
        for mode, r in modes.items():
            lat = r.get("latency_ms", {})
            first = lat.get("latency") or lat.get("start") or {}
            e2e = lat.get("e2e") or {}
            label = (
                f"closed c={r.get('concurrency')}"
                if mode == "closed"
                else f"open {r.get('rate_per_s', 0):g}/s"
            )
            cpu = r.get("cpu_pct", {})
            us = r.get("cpu_us_per_op", {})
            rss = r.get("gateway_rss_kb", {})
            rss_s = f"{_mb(rss.get('start'))}->{_mb(rss.get('end'))}"
            if scenario == "baseline":
                rss_s = "-"
            rows.append(
                f"{target['name']:<14}{scenario:<10}{label:<12}{r.get('throughput_per_s', 0):>8.0f}"
                f"{_ms(first.get('p50')):>8}{_ms(first.get('p95')):>8}{_ms(first.get('p99')):>8}"
                f"{_ms(e2e.get('p50')):>9}{_ms(e2e.get('p99')):>9}{r.get('errors', 0):>6}"
                f"{_pct(cpu.get('gateway')):>6}{_pct(cpu.get('agent')):>5}"
                f"{_pct(cpu.get('harness')):>5}{_pct(cpu.get('postgres')):>5}"
                f"{_pct(cpu.get('system')):>6}{_pct(us.get('gateway')):>7}{_pct(us.get('box')):>7}"
                f"{rss_s:>11}"
            )
    return rows


def rss_lines(target: dict[str, Any]) -> list[str]:
    """``--rss-interval``: the RSS series of each run, and the side load's counts."""
    out: list[str] = []
    for scenario, modes in target.get("scenarios", {}).items():
        for mode, r in modes.items():
            series = r.get("gateway_rss")
            for s in series if isinstance(series, list) else [series] if series else []:
                if not s.get("series"):
                    continue
                slope, whole = (
                    s.get("slope_mb_per_min_second_half"),
                    s.get("slope_mb_per_min_measured"),
                )
                out.append(
                    f"  RSS {scenario}/{mode}: {_mb(s.get('start_kb'))} MB -> "
                    f"{_mb(s.get('end_kb'))} MB (max {_mb(s.get('max_kb'))}); slope "
                    f"{slope if slope is not None else '-'} MB/min over the second half "
                    f"({whole if whole is not None else '-'} measured), "
                    f"{len(s['series'])} samples every {s.get('interval_s')} s"
                )
            side = r.get("side_load")
            for sl in side if isinstance(side, list) else [side] if side else []:
                counts = "; ".join(
                    f"{a} " + ", ".join(f"{k}: {v}" for k, v in c.items())
                    for a, c in sl.get("counts", {}).items()
                )
                out.append(
                    f"  side load {scenario}/{mode} ({sl.get('rate_per_s')}/s, "
                    f"{sl.get('callers')} callers): {counts}"
                )
    return out


def render(result: dict[str, Any], top: int = 12) -> str:
    meta = result.get("meta", {})
    opts = meta.get("options", {})
    lines = [
        "swarmgate benchmark "
        f"(cpus={meta.get('host', {}).get('cpus')}, duration={opts.get('duration_s')}s "
        f"+ warmup {opts.get('warmup_s')}s, repeats={opts.get('repeat')} -> medians, "
        f"payload={opts.get('payload_bytes')}B, preload={opts.get('preload')})",
        "latencies in ms; p50/p95/p99 = baseline round trip or durable start (201); "
        "e2e = start sent -> callback received; open loop measures from the intended send time",
        "gw%/ag%/hn%/pg% = CPU of gateway / echo agent / harness / all postgres processes "
        "(100 = one core); sys% = whole machine (100 = every core busy); gw us / box us = CPU "
        "microseconds per unit of work of the gateway / of gateway + agent + PostgreSQL",
        "",
        HEADER,
        "-" * len(HEADER),
    ]
    for target in result.get("targets", []):
        lines += scenario_rows(target)
    lines.append("")
    for target in result.get("targets", []):
        lines.append(f"{target['name']}: ratios durable/baseline")
        for mode, r in target.get("ratios", {}).items():
            lines.append(
                f"  {mode:<6} throughput start {_ratio(r.get('start_throughput'))}"
                f"  lifecycle {_ratio(r.get('lifecycle_throughput'))}"
                f" | p50 start {_ratio(r.get('start_p50'))}"
                f"  e2e {_ratio(r.get('lifecycle_e2e_p50'))}"
                f" | p99 start {_ratio(r.get('start_p99'))}"
                f"  e2e {_ratio(r.get('lifecycle_e2e_p99'))}"
            )
        checks = target.get("targets", {})
        if checks:
            lines.append(
                "  targets: "
                + ", ".join(
                    f"{k} {'MET' if c['met'] else 'missed' if c['met'] is False else 'n/a'}"
                    f" ({_ratio(c['value'])})"
                    for k, c in checks.items()
                )
            )
        rss0, rss1 = target.get("gateway_rss_kb_ready"), target.get("gateway_rss_kb_end")
        store = target.get("store", {})
        lines.append(
            f"  gateway RSS ready {_mb(rss0)} MB -> end {_mb(rss1)} MB; "
            f"store ops {store.get('operations')} callbacks {store.get('callbacks')}"
        )
        lines += rss_lines(target)
        lines += worker_lines(target)
        prof = target.get("profile")
        if isinstance(prof, dict) and "samples" in prof:
            lines.append(
                f"  profile ({prof['samples']} samples, lifecycle load): self time by area"
            )
            lines.append(
                "    "
                + ", ".join(f"{k} {v}%" for k, v in list(prof["self_by_area_pct"].items())[:10])
            )
            lines.append(
                "    inclusive by area: "
                + ", ".join(
                    f"{k} {v}%" for k, v in list(prof["inclusive_by_area_pct"].items())[:10]
                )
            )
            lines.append("    top self:")
            lines += [f"      {e['pct']:>5}%  {e['frame']}" for e in prof["top_self"][:top]]
            lines.append("    top inclusive (gateway code):")
            lines += [
                f"      {e['pct']:>5}%  {e['frame']}"
                for e in prof.get("top_inclusive_own_code", [])[:top]
            ]
        elif isinstance(prof, dict):
            lines.append(f"  profile: {prof.get('error')}")
        lines.append("")
    return "\n".join(lines)


def worker_lines(target: dict[str, Any]) -> list[str]:
    """With several gateway processes: how they shared each run (percent of one core each)."""
    listeners = target.get("gateway_listeners")
    if not isinstance(listeners, int) or listeners < 2:
        return []
    lines = [f"  gateway workers listening: {listeners}; CPU % of a core per gateway process:"]
    for scenario, modes in target.get("scenarios", {}).items():
        for mode, run in modes.items():
            shares = run.get("gateway_cpu_pct_by_process") or []
            text = " | ".join(" / ".join(f"{x:g}" for x in one) for one in shares)
            lines.append(f"    {scenario} {mode}: {text}")
    return lines
