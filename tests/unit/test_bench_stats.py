"""The bench's measuring parts: the RSS slope, CPU per process (and per process of a tree), and
the sockets listening on a port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from bench.procs import free_port, listening_sockets
from bench.stats import CpuMeter, ProcessTree, RssSampler, slope_per_min


def test_slope_is_in_units_per_minute() -> None:
    assert slope_per_min([(0.0, 10.0), (30.0, 11.0), (60.0, 12.0)]) == 2.0
    assert slope_per_min([(0.0, 1.0)]) is None


def test_the_rss_summary_skips_warm_up_and_fits_the_second_half() -> None:
    s = RssSampler(pid=1, interval_s=1.0)
    # warm-up climbs 100 MB, then the measured part is flat for 60 s apart from one bump early
    s.points = [(0.0, 0), (5.0, 100 * 1024)]
    s.points += [(10.0 + t, 100 * 1024 + (2048 if t == 5 else 0)) for t in range(0, 61, 5)]
    out = s.summary(measure_from_s=10.0)
    assert (out["start_kb"], out["end_kb"], out["max_kb"]) == (102400, 102400, 104448)
    assert out["slope_mb_per_min_second_half"] == 0.0
    assert out["series"][0] == [0.0, 0]  # the series keeps everything, warm-up included


def _burn_then_wait(seconds: float) -> subprocess.Popen[bytes]:
    """A child that spends ``seconds`` of CPU, then sleeps until killed."""
    code = f"import time\nt=time.process_time()\nwhile time.process_time()-t<{seconds}: pass\n"
    code += "print('burnt', flush=True)\ntime.sleep(60)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def test_a_process_that_ends_while_measured_is_lost_not_negative_cpu() -> None:
    # the tree of this test's process holds a child that has burnt 0.3 s of CPU; it is killed
    # between start and stop, as a crashed worker is: the CPU is never negative and it is lost
    child = _burn_then_wait(0.3)
    assert child.stdout is not None and child.stdout.readline() == b"burnt\n"
    meter = CpuMeter({"tree": ProcessTree(os.getpid()), "self": os.getpid()})
    meter.start(time.perf_counter())
    child.kill()
    child.wait()
    out = meter.stop(time.perf_counter() + 0.1)
    assert out["tree"] >= 0.0
    assert meter.lost == {"tree": [child.pid]}


def test_a_process_that_starts_while_measured_counts_whole() -> None:
    meter = CpuMeter({"tree": ProcessTree(os.getpid()), "self": os.getpid()})
    t0 = time.perf_counter()
    meter.start(t0)
    child = _burn_then_wait(0.3)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"burnt\n"
        out = meter.stop(t0 + 1.0)  # as if one second: percent = CPU seconds x 100
        assert out["tree"] >= 30.0
        assert out["self"] < 30.0  # one process is that process alone, without its children
        assert meter.lost == {}
        assert meter.by_process["tree"][0] >= 30.0  # the child's share, busiest first
        assert len(meter.by_process["tree"]) >= 2 and "self" not in meter.by_process
    finally:
        child.kill()
        child.wait()


def test_listening_sockets_counts_each_socket_sharing_a_port() -> None:
    port = free_port()
    socks: list[socket.socket] = []
    try:
        assert listening_sockets(port) == 0
        for expected in (1, 2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            assert listening_sockets(port) == expected - 1  # bound, not yet listening
            s.listen()
            socks.append(s)
            assert listening_sockets(port) == expected
    finally:
        for s in socks:
            s.close()
    assert listening_sockets(port) == 0
