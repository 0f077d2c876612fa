"""Memory of a process, read from Linux's /proc, for the benchmarks: now, at its peak, and around one call."""

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path


def status_mb(pid: int | str = "self") -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of a process in MB (Linux /proc); {} when it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(kb) / 1024 for key, kb in re.findall(r"^(VmHWM|VmRSS|RssAnon|RssFile):\s+(\d+) kB", text, re.M)}


def measured(fn: Callable[[], dict]) -> dict:
    """``fn()``'s result with its seconds and its peak resident memory above the memory before it (MB), sampled by a
    thread every 2 ms: a process's lifetime peak (ru_maxrss) would include imports and earlier work."""
    base = current_rss_mb()
    peak, stop = base, threading.Event()

    def poll() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, current_rss_mb())
            stop.wait(0.002)

    sampler = threading.Thread(target=poll)
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        stop.set()
        sampler.join()
    return {**result, "seconds": seconds, "peak_mb": max(peak, current_rss_mb()) - base}


def current_rss_mb() -> float:
    """Resident memory now (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
