"""Helpers of ``benchmarks/gpu_run.sh``: the device record, the step log and the summary writer.

Subcommands (``python benchmarks/gpu_summary.py CMD ...``):

* ``env OUTDIR [--measure]``: ``OUTDIR/env.json`` with the card (``nvidia-smi`` and torch), the
  software versions, the backends hfkernels finds per device, the card's DRAM bandwidth (from
  torch's properties, else a datasheet figure by name) and, with ``--measure``, the bandwidth of
  a device-to-device copy measured here. Works without torch or a GPU (records their absence).
* ``backends FILE``: the backend table alone (after the extension is built).
* ``record OUTDIR --step NAME --status S ...``: append one step's record to ``OUTDIR/steps.jsonl``.
* ``write OUTDIR``: ``OUTDIR/summary.json`` and ``OUTDIR/SUMMARY.md`` from whatever the steps left
  there (a missing part is reported as missing, never an error).
* ``get FILE KEY.PATH``: print one value of a JSON file (for the shell script).

Only ``env`` and ``backends`` import torch; the rest is standard library, so the summary can be
written even where torch is broken.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

#: DRAM bandwidth by datasheet, GB/s, matched as a substring of the device name (first match
#: wins, so the more specific names come first). Used only when torch does not report the
#: memory clock and bus width.
DATASHEET_GBPS = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),
    ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),
    ("L40S", 864.0),
    ("L40", 864.0),
    ("RTX 4090", 1008.0),
    ("RTX 3090", 936.0),
    ("A10", 600.0),
    ("L4", 300.0),
    ("T4", 320.0),
    ("V100", 900.0),
)

#: step statuses, in the order the summary counts them
STATUSES = ("ok", "failed", "timeout", "skipped")
#: metric columns of the evaluation table (the paper's six first)
EVAL_METRICS = ("EN", "MI", "VIF", "Qabf", "SSIM", "SD", "SF", "AG", "SCD", "CC", "PSNR", "Nabf")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    # the summary is rewritten after every step: a reader (or a kill) never sees half a file
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def datasheet_gbps(name: str | None) -> float | None:
    """The datasheet DRAM bandwidth (GB/s) of a card named ``name``, if it is in the table."""
    if not name:
        return None
    for key, gbps in DATASHEET_GBPS:
        if key.lower() in name.lower():
            return gbps
    return None


# ---------------------------------------------------------------------------------------------
# env / backends


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def nvidia_smi() -> dict:
    """Cards as ``nvidia-smi`` lists them: ``{"gpus": [{name, driver, memory_mib, ...}]}``."""
    fields = ("name", "driver_version", "memory.total", "compute_cap", "clocks.max.sm", "clocks.max.memory")
    out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if out is None:
        # old drivers do not know compute_cap: ask again without it
        fields = fields[:3]
        out = _run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"])
    if out is None:
        return {"available": False, "why": "nvidia-smi not found or failed"}
    gpus = []
    for line in out.splitlines():
        vals = [v.strip() for v in line.split(",")]
        if len(vals) == len(fields):
            gpus.append(dict(zip(fields, vals)))
    return {"available": bool(gpus), "gpus": gpus, "why": "" if gpus else "nvidia-smi lists no GPU"}


def _backend_table(torch) -> dict:
    from hfkernels.core.backends import backend_status

    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return {d: {b: {"ok": ok, "why": why} for b, (ok, why) in backend_status(d).items()} for d in devices}


def _copy_gbps(torch) -> float:
    """Bytes read + written per second of a 1 GiB device-to-device copy (median of 10)."""
    n = 1 << 28  # float32 elements: 1 GiB
    x = torch.empty(n, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    times = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        y.copy_(x)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)
    times.sort()
    del x, y
    torch.cuda.empty_cache()
    return 2 * 4 * n / times[len(times) // 2] / 1e9


def collect_env(measure: bool) -> dict:
    env: dict = {
        "time": _now(),
        "host": platform.node(),
        "python": f"{platform.python_version()} ({sys.executable})",
        "cpu_count": os.cpu_count(),
        "nvidia_smi": nvidia_smi(),
        "nvcc": _run(["nvcc", "--version"]),
    }
    if env["nvcc"]:
        m = re.search(r"release ([\d.]+)", env["nvcc"])
        env["nvcc"] = m.group(1) if m else env["nvcc"].splitlines()[-1]
    try:
        import torch
    except Exception as e:  # noqa: BLE001  (a broken install is reported, not fatal)
        env["torch"] = None
        env["torch_why"] = f"torch not importable: {type(e).__name__}: {e}"
    else:
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            gpu = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                   "memory_gib": round(p.total_memory / 2**30, 1)}
            l2 = getattr(p, "L2_cache_size", None)
            if l2:
                gpu["l2_mib"] = round(l2 / 2**20, 1)
            clock, bus = getattr(p, "memory_clock_rate", None), getattr(p, "memory_bus_width", None)
            if clock and bus:  # double data rate: two transfers per clock
                gpu["dram_gbps"] = round(2.0 * clock * 1e3 * bus / 8 / 1e9, 1)
                gpu["dram_gbps_from"] = "torch device properties"
            elif datasheet_gbps(p.name):
                gpu["dram_gbps"] = datasheet_gbps(p.name)
                gpu["dram_gbps_from"] = "datasheet"
            if measure:
                gpu["copy_gbps"] = round(_copy_gbps(torch), 1)
            env["gpu"] = gpu
        try:
            import triton

            env["triton"] = triton.__version__
        except Exception as e:  # noqa: BLE001
            env["triton"] = f"not importable ({type(e).__name__})"
        try:
            import hfkernels

            env["hfkernels"] = hfkernels.__version__
            env["backends"] = _backend_table(torch)
        except Exception as e:  # noqa: BLE001
            env["hfkernels"] = f"not importable: {type(e).__name__}: {e}"
    smi = env["nvidia_smi"]
    if "gpu" not in env and smi.get("available"):
        # torch missing or CPU-only: the card's name still comes from nvidia-smi
        g = smi["gpus"][0]
        env["gpu"] = {"name": g["name"], "capability": g.get("compute_cap"),
                      "dram_gbps": datasheet_gbps(g["name"]), "dram_gbps_from": "datasheet"}
    env["has_gpu"] = bool(env.get("cuda_available") or smi.get("available"))
    if not env["has_gpu"]:
        env["no_gpu_why"] = "; ".join(
            w for w in (smi.get("why"), None if env.get("torch") is None else
                        f"torch {env['torch']} sees no CUDA device") if w)
    return env


# ---------------------------------------------------------------------------------------------
# the summary


def load_steps(outdir: Path) -> list[dict]:
    """The step records, the last one per step (a rerun with --only replaces earlier records)."""
    steps: dict[str, dict] = {}
    path = outdir / "steps.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "step" in rec:
                steps.pop(rec["step"], None)
                steps[rec["step"]] = rec
    return list(steps.values())


def junit_counts(path: Path) -> dict | None:
    """Totals and failed test ids of a pytest ``--junitxml`` file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed = []
    for suite in root.iter("testsuite"):
        for k in counts:
            counts[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["failed_ids"] = failed
    return counts


def bench_rows(path: Path) -> list[dict]:
    """Flat rows of a pytest-benchmark JSON: name, group, median ms and what ``extra_info`` holds."""
    data = _read_json(path)
    rows = []
    for b in (data or {}).get("benchmarks", []) if isinstance(data, dict) else []:
        ex = b.get("extra_info") or {}
        rows.append({"name": b.get("name"), "group": b.get("group"),
                     "median_ms": ex.get("median_ms", (b.get("stats") or {}).get("median", 0) * 1e3), **ex})
    return rows


def bandwidth_rows(rows: list[dict], env: dict) -> list[dict]:
    """The kernel rows that measured an achieved bandwidth, with it as a fraction of the peaks."""
    gpu = env.get("gpu") or {}
    out = []
    for r in rows:
        gbps = r.get("bandwidth_GBps")
        if not isinstance(gbps, (int, float)):
            continue
        peak = r.get("dram_GBps") or gpu.get("dram_gbps")
        copy = gpu.get("copy_gbps")
        out.append({"op": r.get("op"), "mode": r.get("mode"), "shape": r.get("shape"), "dtype": r.get("dtype"),
                    "backend": r.get("backend"), "median_ms": r.get("median_ms"), "ratio": r.get("ratio"),
                    "GBps": gbps, "peak_GBps": peak, "of_peak": round(gbps / peak, 3) if peak else None,
                    "copy_GBps": copy, "of_copy": round(gbps / copy, 3) if copy else None})
    return out


def collect(outdir: Path) -> dict:
    env = _read_json(outdir / "env.json") or {}
    run = _read_json(outdir / "run.json") or {}
    steps = load_steps(outdir)
    order = {name: i for i, name in enumerate(run.get("steps") or [])}
    steps.sort(key=lambda r: order.get(r["step"], len(order)))
    bench = {p.stem: bench_rows(p) for p in sorted((outdir / "bench").glob("*.json"))}
    evals = {}
    for p in sorted((outdir / "eval").glob("*.json")):
        d = _read_json(p)
        if isinstance(d, dict) and isinstance(d.get("mean"), dict):
            evals[p.stem] = {"pairs": len(d.get("per_image") or {}), "mean": d["mean"]}
    history = _read_json(outdir / "train" / "history.json")
    return {
        "written": _now(),
        "run": run,
        "card": (env.get("gpu") or {}).get("name"),
        "env": env,
        "backends_after_build": _read_json(outdir / "backends.json"),
        "data": _read_json(outdir / "data.json"),
        "steps": steps,
        "status_counts": {s: sum(1 for r in steps if r.get("status") == s) for s in STATUSES},
        "tests": junit_counts(outdir / "tests" / "junit.xml"),
        "bench": bench,
        "bandwidth": bandwidth_rows([r for rows in bench.values() for r in rows], env),
        "train": {"history": history, "config": _read_json(outdir / "train" / "config.json")} if history else None,
        "eval": evals,
    }


def _fmt(v, nd=3) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        a = abs(v)
        if a >= 100 or a == 0:
            return f"{v:.0f}"
        return f"{v:.{nd}g}" if a >= 0.01 else f"{v:.2e}"
    return str(v)


def _mib_to_gib(v) -> float | None:
    try:
        return round(float(v) / 1024, 1)
    except (TypeError, ValueError):
        return None


def _pct(v) -> str:
    return "" if v is None else f"{100 * v:.1f} %"


def _table(head: list[str], rows: list[list]) -> list[str]:
    cell = lambda v: _fmt(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)] + [
        "| " + " | ".join(cell(v) for v in r) + " |" for r in rows]


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return lines[-n:]


def render(s: dict, outdir: Path) -> str:
    env, run = s["env"], s["run"]
    card = s["card"] or "no GPU"
    md = [f"# hfkernels GPU run: {card}", ""]
    mode = "dry run (nothing that needs a GPU was run)" if run.get("dry_run") else "full run"
    md.append(f"{mode}; started {run.get('started', '?')}, summary written {s['written']}; "
              f"time budget {run.get('budget_s', '?')} s; data root: {run.get('data_root') or 'none'}.")
    counts = s["status_counts"]
    md.append("Steps: " + ", ".join(f"{counts[k]} {k}" for k in STATUSES) + ".")
    md.append("")

    md += ["## Device", ""]
    gpu = env.get("gpu") or {}
    smi = (env.get("nvidia_smi") or {}).get("gpus") or [{}]
    md += _table(["what", "value"], [
        ["card", gpu.get("name") or f"none ({env.get('no_gpu_why', 'not recorded')})"],
        ["compute capability", gpu.get("capability")],
        ["multiprocessors", gpu.get("sm_count")],
        ["memory (GiB)", gpu.get("memory_gib") or _mib_to_gib(smi[0].get("memory.total"))],
        ["DRAM bandwidth (GB/s)", f"{_fmt(gpu.get('dram_gbps'))} ({gpu.get('dram_gbps_from', '')})"
         if gpu.get("dram_gbps") else ""],
        ["measured copy (GB/s, read + write)", gpu.get("copy_gbps")],
        ["driver", smi[0].get("driver_version")],
        ["nvcc", env.get("nvcc")],
        ["torch", f"{env.get('torch')} (CUDA {env.get('torch_cuda')})" if env.get("torch")
         else env.get("torch_why", "")],
        ["triton", env.get("triton")],
        ["hfkernels", env.get("hfkernels")],
        ["python", env.get("python")],
        ["CPU cores", env.get("cpu_count")],
    ])
    backends = s["backends_after_build"] or env.get("backends")
    if isinstance(backends, dict):
        label = "after the build" if s["backends_after_build"] else "before the build"
        md += ["", f"Backends ({label}):", ""]
        md += _table(["device", "backend", "runs", "why"],
                     [[d, b, v.get("ok"), v.get("why")] for d, bs in backends.items() for b, v in bs.items()])
    md.append("")

    md += ["## Steps", ""]
    md += _table(["step", "status", "seconds", "budget s", "note", "log"], [
        [r["step"], r.get("status"), r.get("seconds"), r.get("budget"),
         r.get("reason") or (f"exit {r.get('rc')}" if r.get("status") != "ok" else ""), r.get("log")]
        for r in s["steps"]])
    skipped = [r for r in s["steps"] if r.get("status") == "skipped"]
    if skipped:
        md += ["", "Skipped steps:", ""] + [f"- `{r['step']}`: {r.get('reason', '')}" for r in skipped]
    bad = [r for r in s["steps"] if r.get("status") in ("failed", "timeout")]
    for r in bad:
        log = outdir / r["log"] if r.get("log") else None
        tail = _tail(log) if log else []
        if tail:
            md += ["", f"Last lines of `{r['log']}` ({r['step']}, {r['status']}):", "", "```", *tail, "```"]
    md.append("")

    md += ["## GPU tests", ""]
    t = s["tests"]
    if t:
        md.append(f"{t['passed']} passed, {t['failures']} failed, {t['errors']} errors, {t['skipped']} skipped "
                  f"(of {t['tests']}).")
        if t["failed_ids"]:
            md += ["", "Failed:", ""] + [f"- `{i}`" for i in t["failed_ids"][:40]]
            if len(t["failed_ids"]) > 40:
                md.append(f"- ... and {len(t['failed_ids']) - 40} more")
    else:
        md.append("No test results (see the `tests` step).")
    md.append("")

    md += ["## Kernel bandwidth", ""]
    if s["bandwidth"]:
        md += _table(["op", "mode", "shape", "dtype", "backend", "median ms", "x torch", "GB/s", "of DRAM peak",
                      "of measured copy"],
                     [[r["op"], r["mode"], r["shape"], r["dtype"], r["backend"], r["median_ms"], r["ratio"],
                       r["GBps"], _pct(r["of_peak"]), _pct(r["of_copy"])] for r in s["bandwidth"]])
        md += ["", "Bytes counted: read vis, ir, mu and write the fused image once (the minimum traffic)."]
    else:
        md.append("No bandwidth figures (see the `bench-kernels` step).")
    md.append("")

    md += ["## Benchmarks", ""]
    any_bench = False
    for name in ("kernels", "losses", "tables"):
        table_md = outdir / "bench" / f"{name}.md"
        if table_md.is_file() and table_md.read_text().strip():
            md += [f"### {name}", "", table_md.read_text().strip(), ""]
            any_bench = True
        elif s["bench"].get(name):
            md += [f"### {name}", ""]
            md += _table(["group", "benchmark", "median ms", "ratio", "peak extra MB"],
                         [[r.get("group"), r.get("name"), r.get("median_ms"), r.get("ratio"), r.get("peak_extra_mb")]
                          for r in s["bench"][name]])
            md.append("")
            any_bench = True
    if not any_bench:
        md += ["No benchmark results (see the `bench-*` steps).", ""]

    md += ["## Training (`paper` preset)", ""]
    tr = s["train"]
    if tr and isinstance(tr["history"], list):
        cfg = (tr.get("config") or {}).get("train", tr.get("config") or {})
        if isinstance(cfg, dict) and cfg.get("data"):
            md.append(f"Data: {', '.join(map(str, cfg['data']))}; batch {cfg.get('batch_size')}.")
            md.append("")
        md += _table(["epoch", "train loss", "images", "seconds", "images/s"],
                     [[h.get("epoch"), h.get("train_loss"), h.get("images"), h.get("seconds"),
                       h.get("images_per_second")] for h in tr["history"] if isinstance(h, dict)])
    else:
        md.append("No training history (see the `train` step).")
    md.append("")

    md += ["## Zero-shot evaluation (native resolution, paper protocol)", ""]
    if s["eval"]:
        names = [m for m in EVAL_METRICS if any(m in e["mean"] for e in s["eval"].values())]
        md += _table(["set", "pairs", *names],
                     [[k, e["pairs"], *(e["mean"].get(m) for m in names)] for k, e in s["eval"].items()])
    else:
        md.append("No evaluation results (see the `eval-*` steps).")
    data = s["data"]
    if isinstance(data, dict) and data.get("sets"):
        md += ["", "Data found:", ""]
        md += _table(["set", "pairs", "of", "note"],
                     [[d.get("name"), d.get("pairs"), d.get("total"), d.get("note", "")] for d in data["sets"]])
    md.append("")

    res = outdir / "resources" / "resources.md"
    if res.is_file():
        md += ["## Resource report", "", res.read_text().strip(), ""]
    vid = outdir / "video" / "video.md"
    if vid.is_file():
        md += ["## Video fusion (benchmarks/video_fps.py)", "", vid.read_text().strip(), ""]
    return "\n".join(md)


def write_summary(outdir: Path) -> dict:
    s = collect(outdir)
    _write_atomic(outdir / "summary.json", json.dumps(s, indent=1, default=str))
    _write_atomic(outdir / "SUMMARY.md", render(s, outdir))
    return s


# ---------------------------------------------------------------------------------------------
# command line


def _outdir(p: str) -> Path:
    d = Path(p)
    if not d.is_dir():
        raise argparse.ArgumentTypeError(f"OUTDIR {p} is not a folder")
    return d


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_summary.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env", help="record the device and software into OUTDIR/env.json")
    p.add_argument("outdir", type=_outdir)
    p.add_argument("--measure", action="store_true", help="also time a device-to-device copy (needs the GPU)")
    p = sub.add_parser("backends", help="write the backend table to FILE")
    p.add_argument("file")
    p = sub.add_parser("record", help="append a step record to OUTDIR/steps.jsonl")
    p.add_argument("outdir", type=_outdir)
    p.add_argument("--step", required=True)
    p.add_argument("--status", required=True, choices=STATUSES)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--budget", type=int, default=None)
    p.add_argument("--rc", type=int, default=None)
    p.add_argument("--reason", default="")
    p.add_argument("--log", default="")
    p.add_argument("--cmd", dest="step_cmd", default="", help="what the step runs (or would run)")
    p = sub.add_parser("write", help="write OUTDIR/summary.json and OUTDIR/SUMMARY.md")
    p.add_argument("outdir", type=_outdir)
    p = sub.add_parser("get", help="print the value at KEY (dotted path) of a JSON file; empty if absent")
    p.add_argument("file")
    p.add_argument("key")
    a = ap.parse_args(argv)

    if a.command == "env":
        env = collect_env(a.measure)
        _write_atomic(a.outdir / "env.json", json.dumps(env, indent=1))
        print(json.dumps({k: env.get(k) for k in ("has_gpu", "gpu", "torch", "torch_cuda", "triton", "nvcc")}))
    elif a.command == "backends":
        import torch

        _write_atomic(Path(a.file), json.dumps(_backend_table(torch), indent=1))
    elif a.command == "record":
        rec = {"step": a.step, "status": a.status, "seconds": round(a.seconds, 1), "budget": a.budget,
               "rc": a.rc, "reason": a.reason, "log": a.log, "cmd": a.step_cmd, "time": _now()}
        with open(a.outdir / "steps.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")
    elif a.command == "write":
        s = write_summary(a.outdir)
        print(f"summary: {a.outdir / 'SUMMARY.md'} ({', '.join(f'{v} {k}' for k, v in s['status_counts'].items())})")
    elif a.command == "get":
        v = _read_json(Path(a.file))
        for k in a.key.split("."):
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, bool):  # the shell tests numbers
            v = int(v)
        print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
