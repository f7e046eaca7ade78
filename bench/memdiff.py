"""Where the gateway's memory grew between two tracemalloc snapshots.

    python -m bench.memdiff DIR [--first N] [--top 25] [--frames 4]

Reads the snapshots ``bench.gwproc`` writes with ``SWARMGATE_DEBUG_TRACEMALLOC=DIR,...``,
compares snapshot ``--first`` (default 1: after warm-up) with the last one of the same process,
and prints the allocation sites (traceback, ``--frames`` deep) whose live size grew most.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memdiff")
    p.add_argument("dir", type=Path)
    p.add_argument("--first", type=int, default=1)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--frames", type=int, default=4)
    args = p.parse_args(argv)
    snaps = sorted(args.dir.glob("snap-*.tracemalloc"))
    if len(snaps) < 2:
        print("need at least two snapshots", file=sys.stderr)
        return 2
    by_pid: dict[str, list[Path]] = {}
    for s in snaps:
        by_pid.setdefault(s.name.split("-")[1], []).append(s)
    for pid, files in by_pid.items():
        first = files[min(args.first, len(files) - 2)]
        last = files[-1]
        a = tracemalloc.Snapshot.load(str(first))
        b = tracemalloc.Snapshot.load(str(last))
        total_a = sum(s.size for s in a.statistics("filename"))
        total_b = sum(s.size for s in b.statistics("filename"))
        print(
            f"pid {pid}: {first.name} -> {last.name}: traced "
            f"{total_a / 1e6:.1f} MB -> {total_b / 1e6:.1f} MB"
        )
        for stat in b.compare_to(a, "traceback")[: args.top]:
            if stat.size_diff <= 0:
                continue
            print(f"  {stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
            for line in stat.traceback.format(limit=args.frames, most_recent_first=True):
                print("      " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
