"""Run the ``psiq`` command with timestamps around what lies outside the protocol session.

Usage (by ``bench/bench_outside.py``): ``PYTHONPATH=<tree> python bench/outside_probe.py psi connect ...``
with ``PSIQ_PROBE_OUT`` naming a JSON file to write. Works with any psiq tree that has
``psi.api.read_keys / exchange_hello / run_party / write_output`` (the names it wraps), so the
same probe times old and new code. Marks (seconds since the Unix epoch, paired ``name>`` /
``name<`` around each call) and the process's own CPU seconds are written when the process ends.
"""

from __future__ import annotations

import os
import sys
import time



def _started() -> float:
    """This process's start (exec) time, from /proc (10 ms resolution)."""
    now = time.time()
    with open("/proc/uptime") as fh:
        uptime = float(fh.read().split()[0])
    with open("/proc/self/stat", "rb") as fh:
        raw = fh.read()
    ticks = int(raw[raw.rindex(b")") + 2 :].split()[19])
    return now - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


_MARKS: list[tuple[str, float]] = [("exec", _started()), ("probe", time.time())]


def _dump() -> None:
    import json
    import resource

    times = os.times()
    _MARKS.append(("exit", time.time()))
    doc = {"marks": _MARKS, "cpu_user": times.user, "cpu_sys": times.system,
           "cpu_children": times.children_user + times.children_system,
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    with open(os.environ["PSIQ_PROBE_OUT"], "w") as fh:
        json.dump(doc, fh)


def _wrap(module: object, name: str, label: str) -> None:
    inner = getattr(module, name, None)
    if inner is None:
        return

    def timed(*args: object, **kwargs: object) -> object:
        _MARKS.append((label + ">", time.time()))
        try:
            return inner(*args, **kwargs)
        finally:
            _MARKS.append((label + "<", time.time()))

    setattr(module, name, timed)


def main() -> None:
    import cli.main as entry

    _MARKS.append(("imported", time.time()))
    import psi.api as api

    _MARKS.append(("api", time.time()))
    for name, label in (("read_keys", "read"), ("exchange_hello", "hello"), ("run_party", "party"),
                        ("write_output", "write")):
        _wrap(api, name, label)
    real_exit = os._exit

    def leave(code: int) -> None:
        _dump()
        real_exit(code)

    os._exit = leave  # type: ignore[assignment]
    sys.argv = ["psiq"] + sys.argv[1:]
    try:
        entry.main()
    except SystemExit:
        _dump()
        raise


if __name__ == "__main__":
    main()
