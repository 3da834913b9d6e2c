"""Compile-time GPU resource report: registers, spills, shared memory and occupancy on sm_90.

No GPU is needed. Two sources:

* **Triton kernels** (``hfkernels/ops/fuse_triton.py``, ``loss_triton.py``): the host code of
  every op is run on CPU tensors of the paper's shapes with ``wrap_triton`` replaced by a
  recorder, so each launch carries exactly the grid, tile (BH x BW), ``num_warps`` and
  arguments the runtime launcher would pass. Each launch is specialised the way Triton's own
  launcher does (integer/alignment specialisation included), compiled for sm_90 with
  ``triton.compile``, and its PTX is assembled by the ``ptxas`` that ships with Triton (the
  one Triton itself uses for sm_90; a system ptxas is usually too old for Triton's PTX) with
  Triton's flags plus ``-v``.
* **CUDA kernels** (``csrc/cuda/*.cu``, framework-free): ``nvcc -arch=sm_90 -Xptxas -v``.

Shapes: fuse at (16, 1, 480, 640), 4 levels, forward and backward; ``ssim`` (window 48, valid
padding) and ``gradient_max`` at (16, 3, 480, 640), forward and backward; float32 and bfloat16.

Occupancy follows the CUDA occupancy calculator for compute capability 9.0: 64 K registers per
SM split over 4 sub-partitions that each hold whole warps (register allocation unit: 256 per
warp), at most 64 warps and 32 blocks per SM, 228 KB of shared memory per SM with 1 KB reserved
per block. It is an upper bound: it ignores latency, the grid's size and the tail.

Run (this file must not see ``TRITON_INTERPRET``; it removes it from its own environment)::

    python benchmarks/resources.py                       # markdown table + JSON on stdout
    python benchmarks/resources.py --json res.json       # JSON to a file
    python benchmarks/resources.py --no-cuda --dtypes float32 --fuse-shape 2,3,481,643 --levels 5

Exit status 0 also when a part is unavailable (it is listed under "skipped" with the reason).
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# sm_90 limits (CUDA occupancy calculator, compute capability 9.0)
REGS_PER_SM = 65536
SUBPARTITIONS = 4
REG_UNIT = 256  # registers are allocated per warp in units of 256
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
SMEM_PER_SM = 228 * 1024
SMEM_RESERVED_PER_BLOCK = 1024
SMEM_UNIT = 128

FUSE_SHAPE = (16, 1, 480, 640)
FUSE_LEVELS = 4
LOSS_SHAPE = (16, 3, 480, 640)
SSIM_WINDOW = 48


def occupancy(regs: int, threads: int, smem: int = 0) -> dict:
    """Resident blocks and warps per SM on sm_90 for a kernel using ``regs`` registers per
    thread, ``threads`` threads per block and ``smem`` bytes of shared memory per block, and
    what limits them ("regs", "warps", "blocks" or "smem")."""
    if regs <= 0 or threads <= 0 or smem < 0:
        raise ValueError(f"occupancy: regs ({regs}) and threads ({threads}) must be > 0, smem ({smem}) >= 0")
    warps_per_block = math.ceil(threads / 32)
    regs_per_warp = math.ceil(regs * 32 / REG_UNIT) * REG_UNIT
    warps_by_regs = (REGS_PER_SM // SUBPARTITIONS // regs_per_warp) * SUBPARTITIONS
    limits = {
        "regs": warps_by_regs // warps_per_block,
        "warps": MAX_WARPS_PER_SM // warps_per_block,
        "blocks": MAX_BLOCKS_PER_SM,
    }
    if smem:
        limits["smem"] = SMEM_PER_SM // (math.ceil(smem / SMEM_UNIT) * SMEM_UNIT + SMEM_RESERVED_PER_BLOCK)
    blocks = min(limits.values())
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps_per_block,
        "occupancy": blocks * warps_per_block / MAX_WARPS_PER_SM,
        "limited_by": min(limits, key=lambda k: (limits[k], k != "regs")),
    }


@dataclasses.dataclass
class Row:
    """Resources of one compiled kernel variant."""

    source: str  # "triton" or "cuda"
    kernel: str
    variant: str  # constexpr flags / template arguments
    dtype: str
    regs: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int
    threads: int
    tile: str = ""
    launches: int = 0
    grids: str = ""

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(occupancy(self.regs, self.threads, self.smem))
        return d


_PTXAS_FN = re.compile(r"Compiling entry function '([^']+)'")
_PTXAS_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")


def parse_ptxas(log: str) -> dict[str, dict]:
    """``ptxas -v`` output -> {mangled entry name: {regs, spill_stores, spill_loads, stack, smem}}."""
    out: dict[str, dict] = {}
    cur = None
    for line in log.splitlines():
        if m := _PTXAS_FN.search(line):
            cur = out.setdefault(m.group(1), {"regs": 0, "spill_stores": 0, "spill_loads": 0, "stack": 0, "smem": 0})
        elif cur is not None and (m := _PTXAS_PROPS.search(line)):
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        elif cur is not None and (m := _PTXAS_USED.search(line)):
            cur.update(regs=int(m.group(1)), smem=int(m.group(2) or 0))
    return out


# ------------------------------------------------------------------------------------------------
# Triton


class _Recorder:
    """Stands in for ``torch.library.wrap_triton``: ``wrap_triton(kernel)[grid](*args, **kw)``
    records (kernel, grid, args, kw) instead of launching."""

    def __init__(self, sink: list):
        self.sink = sink

    def __call__(self, kernel):
        sink = self.sink

        class _Grid:
            def __getitem__(self, grid):
                return lambda *args, **kw: sink.append((kernel, tuple(grid), args, kw))

        return _Grid()


def triton_launches(dtype_name: str, ops=("fuse", "ssim", "gradient_max")) -> list[tuple]:
    """(op, kernel, grid, args, kwargs) of every Triton launch of ``ops`` (forward and backward)
    at the paper's shapes in ``dtype_name``, recorded from the real host code on CPU tensors."""
    import torch

    from hfkernels.ops import fuse_triton as ft
    from hfkernels.ops import loss_triton as lt

    dt = getattr(torch, dtype_name)
    out: list[tuple] = []
    saved = ft.wrap_triton, lt.wrap_triton
    try:
        for op in ops:
            sink: list = []
            ft.wrap_triton = lt.wrap_triton = _Recorder(sink)
            if op == "fuse":
                n, c, h, w = FUSE_SHAPE
                vis, ir, mu = (torch.empty(n, cc, h, w, dtype=dt) for cc in (c, 1, 1))
                ft.fuse_triton_fwd(vis, ir, mu, FUSE_LEVELS)
                cdt = torch.float64 if dt == torch.float64 else torch.float32
                gbuf = torch.empty(ft._numel(n, c, ft._sizes(h, w, FUSE_LEVELS)[1:]), dtype=cdt)
                ft.fuse_triton_bwd(torch.empty_like(vis), vis, ir, mu, gbuf, FUSE_LEVELS)
            elif op == "ssim":
                x, y = torch.empty(LOSS_SHAPE, dtype=dt), torch.empty(LOSS_SHAPE, dtype=dt)
                args = (SSIM_WINDOW, 1.5, 1e-4, 9e-4, "valid")
                lt.ssim_triton_fwd(x, y, *args)
                lt.ssim_triton_bwd(torch.ones(LOSS_SHAPE[0], dtype=dt), x, y, *args)
            elif op == "gradient_max":
                a, b, f = (torch.empty(LOSS_SHAPE, dtype=dt) for _ in range(3))
                lt.gmax_triton_fwd(a, b, f)
                lt.gmax_triton_bwd(torch.ones((), dtype=dt), a, b, f)
            else:
                raise ValueError(f"ops: unknown op {op!r}")
            out += [(op, *rec) for rec in sink]
    finally:
        ft.wrap_triton, lt.wrap_triton = saved
    return out


def _nvidia_tools():
    """(backend, target, ptxas path, ptxas flags) for sm_90, or raise with the reason."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia import compiler as nv
    from triton.compiler import make_backend

    target = GPUTarget("cuda", 90, 32)
    ptxas = nv.get_ptxas(target.arch).path
    if not ptxas or not os.path.exists(ptxas):
        raise RuntimeError(f"Triton's ptxas for sm_90 is missing ({ptxas!r})")
    # the flags of Triton's own cubin step (nvidia/compiler.py, make_cubin) plus -v
    flags = ["-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={nv.sm_arch_from_capability(90)}"]
    return make_backend(target), target, ptxas, flags


def triton_rows(dtypes=("float32", "bfloat16"), ops=("fuse", "ssim", "gradient_max"), log=None) -> list[Row]:
    """One Row per distinct compiled specialisation of the launches of ``ops`` in ``dtypes``."""
    import triton
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("Triton kernels are compiled only without TRITON_INTERPRET (run main() in a fresh process)")
    backend, target, ptxas, flags = _nvidia_tools()
    rows: dict[tuple, Row] = {}
    for dname in dtypes:
        for op, kernel, grid, args, kw in triton_launches(dname, ops):
            binder = create_function_from_signature(kernel.signature, kernel.params, backend)
            bound, spec, opts = binder(*args, **kw)
            key = (kernel.fn.__name__, str(spec), str(sorted(opts.items())))
            if key in rows:  # the same compiled kernel (e.g. float32 buffers of a bfloat16 op)
                row = rows[key]
                row.launches += 1
                row.grids += f", {grid[0]}x{grid[1]}"
                if dname not in row.dtype.split(","):
                    row.dtype += f",{dname}"
                continue
            options, signature, constexprs, attrs = kernel._pack_args(backend, kw, bound, spec, opts)
            if log:
                log(f"compiling {kernel.fn.__name__} ({dname})")
            ck = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
            with tempfile.TemporaryDirectory() as tmp:
                src = os.path.join(tmp, "k.ptx")
                with open(src, "w") as f:
                    f.write(ck.asm["ptx"])
                res = subprocess.run([ptxas, *flags, src, "-o", os.path.join(tmp, "k.cubin")],
                                     capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"ptxas failed on {kernel.fn.__name__}: {res.stderr[-2000:]}")
            (info,) = parse_ptxas(res.stderr).values()
            names = [p.name for p in kernel.params]
            flags_on = [n for n in names if kw.get(n) is True]
            nums = [f"{n}={kw[n]}" for n in names if n in kw and type(kw[n]) is int and n not in ("BH", "BW")]
            rows[key] = Row(
                source="triton", kernel=kernel.fn.__name__, variant=" ".join(flags_on + nums) or "-",
                dtype=dname, regs=info["regs"], spill_stores=info["spill_stores"],
                spill_loads=info["spill_loads"], stack=info["stack"],
                smem=max(int(ck.metadata.shared), info["smem"]), threads=32 * ck.metadata.num_warps,
                tile=f"{kw.get('BH')}x{kw.get('BW')}", launches=1, grids=f"{grid[0]}x{grid[1]}",
            )
    return list(rows.values())


# ------------------------------------------------------------------------------------------------
# CUDA


def find_nvcc() -> str | None:
    for cand in (os.environ.get("NVCC"), "/usr/local/cuda-13.0/bin/nvcc", shutil.which("nvcc"),
                 os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if cand and os.path.exists(cand):
            return cand
    return None


def _demangle(names: list[str], nvcc: str) -> dict[str, str]:
    filt = os.path.join(os.path.dirname(nvcc), "cu++filt")
    if not os.path.exists(filt):
        filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    res = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True)
    out = res.stdout.splitlines()
    return dict(zip(names, out)) if res.returncode == 0 and len(out) == len(names) else {n: n for n in names}


def _short(demangled: str) -> tuple[str, str]:
    """'void hfk::cuda::(anon)::k<float, __half>(...)' -> ('k', 'float, __half')."""
    head = demangled.replace("(anonymous namespace)::", "").split("(")[0].replace("void ", "").strip()
    m = re.match(r"(?:.*::)?(\w+)(?:<(.*)>)?$", head)
    return (m.group(1), m.group(2) or "-") if m else (head, "-")


def cuda_rows(nvcc: str, arch: str = "sm_90", extra=("-O3",)) -> list[Row]:
    """One Row per kernel instantiation in csrc/cuda/*.cu, from ``nvcc -Xptxas -v``. Threads
    per block: the file's ``constexpr int kThreads`` / ``kBlock``, the block size every
    launcher in that file uses."""
    rows = []
    for cu in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))):
        with open(cu) as f:
            m = re.search(r"constexpr\s+int\s+k(?:Threads|Block)\s*=\s*(\d+)", f.read())
        threads = int(m.group(1)) if m else 256
        with tempfile.TemporaryDirectory() as tmp:
            res = subprocess.run(
                [nvcc, f"-arch={arch}", "-std=c++17", *extra, "-Xptxas", "-v", "-c", cu, "-o",
                 os.path.join(tmp, "k.o"), "-I", os.path.join(ROOT, "csrc", "cpu"), "-I", os.path.dirname(cu)],
                capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"nvcc failed on {cu}: {res.stderr[-2000:]}")
        info = parse_ptxas(res.stderr)
        names = _demangle(list(info), nvcc)
        for mangled, d in info.items():
            kernel, targs = _short(names[mangled])
            targs = targs.replace("__nv_bfloat16", "bf16").replace("__half", "fp16").replace("float", "fp32")
            dt = "bfloat16" if "bf16" in targs else "float16" if "fp16" in targs else "float32" if "fp32" in targs else "-"
            rows.append(Row(source="cuda", kernel=f"{os.path.basename(cu)}:{kernel}", variant=targs, dtype=dt,
                            threads=threads, **d))
    rows.sort(key=lambda r: (r.kernel, r.variant))
    return rows


# ------------------------------------------------------------------------------------------------
# Output


def merge(rows: list[dict]) -> list[dict]:
    """Rows of one kernel variant that differ only in Triton's integer specialisation (one per
    pyramid level, say) merged: the worst registers / spills / occupancy, launches summed."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["source"], r["kernel"], r["variant"], r["dtype"], r["tile"], r["threads"])
        if key not in out:
            out[key] = dict(r, regs_min=r["regs"])
            continue
        m = out[key]
        m["regs_min"] = min(m["regs_min"], r["regs"])
        m["launches"] += r["launches"]
        for f in ("spill_stores", "spill_loads", "stack", "smem"):
            m[f] = max(m[f], r[f])
        if r["regs"] > m["regs"]:
            m.update({k: r[k] for k in ("regs", "blocks_per_sm", "warps_per_sm", "occupancy", "limited_by")})
    return list(out.values())


def markdown(rows: list[dict]) -> str:
    """The merged table: one line per kernel variant."""
    head = ("| source | kernel | variant | dtype | tile | threads | regs | spill st/ld (B) | smem (B) "
            "| blocks/SM | warps/SM (of 64) | launches |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in merge(rows):
        spill = f"{r['spill_stores']}/{r['spill_loads']}"
        if r["spill_stores"] or r["spill_loads"]:
            spill = f"**{spill}**"
        regs = f"{r['regs_min']}-{r['regs']}" if r["regs_min"] != r["regs"] else str(r["regs"])
        lines.append(
            f"| {r['source']} | `{r['kernel']}` | {r['variant']} | {r['dtype']} | {r['tile'] or '-'} "
            f"| {r['threads']} | {regs} | {spill} | {r['smem']} | {r['blocks_per_sm']} "
            f"| {r['warps_per_sm']} ({r['limited_by']}) | {r['launches'] or '-'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    global FUSE_SHAPE, FUSE_LEVELS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", help="write the JSON here ('-': stdout, the default after the table)", default="-")
    p.add_argument("--dtypes", default="float32,bfloat16", help="Triton launch dtypes (comma-separated)")
    p.add_argument("--ops", default="fuse,ssim,gradient_max", help="Triton ops (comma-separated)")
    p.add_argument("--fuse-shape", default=",".join(map(str, FUSE_SHAPE)), help="B,C,H,W of the fuse launches")
    p.add_argument("--levels", type=int, default=FUSE_LEVELS, help="pyramid levels of the fuse launches")
    p.add_argument("--no-triton", action="store_true")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--nvcc-flags", default="-O3", help="extra nvcc flags (setup.py's; the language standard is added)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr, no markdown")
    a = p.parse_args(argv)
    if os.environ.pop("TRITON_INTERPRET", None) is not None and "triton" in sys.modules:
        raise RuntimeError("triton was imported with TRITON_INTERPRET set; run this as a fresh process")
    FUSE_SHAPE, FUSE_LEVELS = tuple(int(v) for v in a.fuse_shape.split(",")), a.levels
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (it warns otherwise)
    log = None if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    if not a.no_triton:
        try:
            rows += triton_rows(tuple(a.dtypes.split(",")), tuple(a.ops.split(",")), log)
        except ImportError as e:
            skipped["triton"] = f"Triton's NVIDIA backend is unavailable: {e}"
        except RuntimeError as e:
            if "ptxas" not in str(e):
                raise
            skipped["triton"] = str(e)
    if not a.no_cuda:
        nvcc = find_nvcc()
        if nvcc is None:
            skipped["cuda"] = "nvcc not found (set NVCC or CUDA_HOME)"
        else:
            short = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}
            want = {short.get(d, d) for d in a.dtypes.split(",")}
            rows += [r for r in cuda_rows(nvcc, extra=tuple(a.nvcc_flags.split())) if r.dtype in want | {"-"}]
    dicts = [r.as_dict() for r in rows]
    doc = {"arch": "sm_90", "fuse_shape": FUSE_SHAPE, "fuse_levels": FUSE_LEVELS, "loss_shape": LOSS_SHAPE,
           "rows": dicts, "skipped": skipped}
    if not a.quiet:
        print(markdown(dicts))
        for part, why in skipped.items():
            print(f"\nskipped {part}: {why}")
        print()
    text = json.dumps(doc, indent=1)
    if a.json == "-":
        print(text)
    else:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
