"""Throughput of the README's main job on a quiet machine and beside busy processes.

The main job is ``hfkernels train`` on its built-in synthetic pairs (tiny preset). Each
measurement runs it in a fresh process (so environment variables that the OpenMP runtime reads
at start-up take effect) and reads the training images/second from the run's ``history.json``.
Busy processes are pure-Python spin loops started and stopped here; each also stops itself after
``--busy-timeout`` seconds, so an interrupted benchmark cannot leave one behind.

Run::

    python benchmarks/under_load.py                       # quiet and beside 1 busy process
    python benchmarks/under_load.py --busy 0,1,2 --repeats 3
    python benchmarks/under_load.py --env GOMP_SPINCOUNT=1000      # or OMP_NUM_THREADS=1, ...

``--env`` settings reach the OpenMP runtime before it starts (each run is a new process), so
``GOMP_SPINCOUNT`` / ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS`` can be compared here.

A load of other people's jobs on the machine falsifies every figure: the 1-minute load average
is printed before each measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

_SPIN = "import time\nend = time.monotonic() + {t}\nwhile time.monotonic() < end:\n    pass\n"


def _busy(n: int, seconds: float) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", _SPIN.format(t=seconds)]) for _ in range(n)]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def _train(epochs: int, env: dict[str, str], timeout: float) -> float:
    """One run of ``hfkernels train``; returns the mean training images/second over its epochs."""
    with tempfile.TemporaryDirectory(prefix="hfk-under-load-") as tmp:
        out = os.path.join(tmp, "run")
        cmd = [sys.executable, "-m", "hfkernels", "train", "--epochs", str(epochs), "--out", out,
               "--no-report", "--no-baseline", "--no-progress", "--device", "cpu"]
        subprocess.run(cmd, env=env, check=True, timeout=timeout, stdout=subprocess.DEVNULL)
        with open(os.path.join(out, "history.json")) as f:
            history = json.load(f)
    rows = history["epochs"] if isinstance(history, dict) else history
    return statistics.mean(r["images_per_second"] for r in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", default="0,1", help="comma-separated numbers of busy processes")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each training run")
    ap.add_argument("--repeats", type=int, default=2, help="runs per setting (median reported)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment for the training runs (repeatable)")
    ap.add_argument("--busy-timeout", type=float, default=300.0,
                    help="seconds after which a busy process stops itself")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    # a kill of this script must still stop its busy processes (the `finally` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        counts = [int(c) for c in args.busy.split(",")]
    except ValueError:
        ap.error(f"--busy: expected comma-separated integers, got {args.busy!r}")
    if any(c < 0 for c in counts) or args.repeats < 1 or args.epochs < 1:
        ap.error("--busy, --repeats and --epochs must be non-negative / positive")
    env = dict(os.environ)
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            ap.error(f"--env: expected NAME=VALUE, got {item!r}")
        env[name] = value
    extra = " ".join(args.env) or "(default environment)"
    print(f"cpus {os.cpu_count()}; {extra}; {args.epochs} epochs, median of {args.repeats}")
    results = {}
    for n in counts:
        rates = []
        for _ in range(args.repeats):
            load = os.getloadavg()[0]
            procs = _busy(n, args.busy_timeout)
            try:
                time.sleep(0.5 if n else 0.0)  # let the spinners reach the scheduler
                rates.append(_train(args.epochs, env, args.busy_timeout))
            finally:
                _stop(procs)
            print(f"  busy {n}: {rates[-1]:6.1f} img/s  (1-min load before: {load:.2f})", flush=True)
        results[n] = statistics.median(rates)
    quiet = results.get(0)
    # a busy process takes one core; sharing fairly per process leaves the job 1/(1 + n) of it
    print("busy processes | img/s (median) | share of quiet | fair share")
    for n, r in results.items():
        share = f"{r / quiet:.2f}" if quiet else "-"
        ideal = f"{1 / (1 + n):.2f}"
        print(f"{n:14d} | {r:14.1f} | {share:>14} | {ideal:>11}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": args.env, "epochs": args.epochs, "img_per_s": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
