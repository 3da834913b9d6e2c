"""FusionLoss forward+backward on the ``cpu`` backend against the ``torch`` backend, quiet and
beside 1 and 2 busy processes, with torch imported before hfkernels (so hfkernels' GOMP_SPINCOUNT
cannot take effect: the case the fused elementwise terms are for).

    python benchmarks/loss_contention.py [--shape 1,3,480,640] [--rounds 7] [--busy 0,1,2]

Each line: median milliseconds of each backend, alternating call by call, and the ratio
torch / cpu measured in the same run (> 1: the cpu backend is faster). The busy processes are
plain Python loops started and stopped by this script; the machine's own load is printed
beside every line (the figures mean nothing without it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch  # first, on purpose: the usual order in a user's script

SPIN_AT_TORCH_LOAD = os.environ.get("GOMP_SPINCOUNT", "unset")

import hfkernels as hk


def busy(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="1,3,480,640")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--busy", default="0,1,2")
    args = p.parse_args(argv)
    b, c, h, w = (int(v) for v in args.shape.split(","))
    g = torch.Generator().manual_seed(0)
    vis = torch.rand(b, c, h, w, generator=g) * 2 - 1
    ir = torch.rand(b, 1, h, w, generator=g) * 2 - 1
    fused = ((vis + ir) / 2).requires_grad_()
    losses = {name: hk.FusionLoss(backend=name) for name in ("cpu", "torch")}

    def call(name):
        t0 = time.perf_counter()
        losses[name](vis, ir, fused).backward()
        fused.grad = None
        return time.perf_counter() - t0

    print(f"FusionLoss fwd+bwd {args.shape}, torch threads {torch.get_num_threads()}, "
          f"GOMP_SPINCOUNT at torch load: {SPIN_AT_TORCH_LOAD} (torch imported first)")
    for n in (int(v) for v in args.busy.split(",")):
        procs = busy(n)
        try:
            time.sleep(0.5)
            for name in losses:
                call(name)  # warm-up
            times = {name: [] for name in losses}
            ratios = []
            for _ in range(args.rounds):
                t_cpu, t_torch = call("cpu"), call("torch")
                times["cpu"].append(t_cpu)
                times["torch"].append(t_torch)
                ratios.append(t_torch / t_cpu)
        finally:
            for q in procs:
                q.kill()
                q.wait()
        load = os.getloadavg()[0]
        print(f"  beside {n} busy process(es): cpu {statistics.median(times['cpu']) * 1e3:8.1f} ms, "
              f"torch {statistics.median(times['torch']) * 1e3:8.1f} ms, ratio torch/cpu "
              f"{statistics.median(ratios):5.2f}x (1-min load average {load:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
