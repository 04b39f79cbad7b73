"""This process's memory as Linux reports it (/proc/self/status), for the benchmarks' peak figures."""
from __future__ import annotations

from pathlib import Path


def status_kib(key: str) -> int:
    """A kB field of /proc/self/status: VmRSS (resident now), VmHWM (peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {key}")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident set (Linux clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")
