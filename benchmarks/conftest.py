"""Shared helpers for the pytest-benchmark suites (``pytest benchmarks/``).

What every benchmark here does:

* times one backend with pytest-benchmark (``benchmark.pedantic``: a fixed, small number of
  rounds, so a CPU run takes minutes, not hours);
* times the reference (the ``"torch"`` backend, or the plain formulation named by the test) in
  the same process, alternating call by call with the benchmarked callable so that load from
  other work hits both alike, and records ``ratio`` = median of (reference time / own time)
  (a speed-up: > 1 means faster than the reference);
* measures peak memory of one extra call with the device's own counters:
  ``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on the CPU (the kernel's
  ``VmHWM`` high-water mark, reset through ``/proc/self/clear_refs``; a sampling thread where
  that is not allowed);
* stores shape, dtype, backend, device name, peak memory, ratio, target and the paper's figure in
  ``benchmark.extra_info`` (so ``--benchmark-json`` carries them to ``hfkernels bench``);
* checks speed targets only as ratios against the reference measured here, failing with a
  message that names the target (``--hfk-targets=report`` records them without failing).

CPU work runs with 2 threads (the targets' set-up; ``HFK_BENCH_THREADS`` overrides it).
On a machine without a GPU the Table 5 / Table 9 set-ups run at scaled CPU shapes, recorded as
such in ``extra_info["shape_note"]``. Triton's interpreter (``TRITON_INTERPRET=1``) is a
correctness tool, never timed: the ``"triton"`` backend is skipped on CPU tensors.
"""
from __future__ import annotations

import functools
import os
import platform
import re
import statistics
import threading
import time

import pytest
import torch

import hfkernels
from hfkernels.core.backends import BACKEND_NAMES, backend_status, get_backend

# The CPU targets are stated for 2 threads; pin it so CPU figures compare across
# machines (GPU timings do not depend on it).
# HFK_BENCH_THREADS overrides it (1 gives steadier figures on a machine shared with other work:
# a 2-thread parallel region stalls whenever the other core is taken).
CPU_THREADS = int(os.environ.get("HFK_BENCH_THREADS", "2"))
torch.set_num_threads(CPU_THREADS)

HAS_GPU = torch.cuda.is_available()
#: the device the paper-table set-ups run on
MAIN_DEVICE = "cuda" if HAS_GPU else "cpu"
REFERENCE = "torch"


def pytest_addoption(parser):
    parser.addoption(
        "--hfk-long",
        action="store_true",
        default=os.environ.get("HFK_BENCH_LONG", "") not in ("", "0"),
        help="hfkernels benchmarks: also run the long CPU cases (listed in benchmarks/RESULTS.md, "
        "'Long cases'); without it the default suite finishes within 10 minutes on a 2-core CPU",
    )
    parser.addoption(
        "--hfk-targets",
        choices=("check", "report"),
        default=os.environ.get("HFK_BENCH_TARGETS", "check"),
        help="hfkernels benchmarks: 'check' fails a benchmark whose speed ratio misses its "
        "target (default); 'report' only records it in extra_info",
    )


def pytest_report_header(config):
    return (
        f"hfkernels benchmarks: device={MAIN_DEVICE} ({device_name(MAIN_DEVICE)}), "
        f"torch threads={torch.get_num_threads()}, "
        f"{'GPU shapes' if HAS_GPU else 'scaled CPU shapes for the paper tables'}"
    )


# ---------------------------------------------------------------------------------------------
# Devices, backends, shapes


def devices() -> list[str]:
    return ["cpu"] + (["cuda"] if HAS_GPU else [])


@functools.lru_cache(maxsize=None)
def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
        cpu = m.group(1).strip() if m else platform.processor()
    except OSError:
        cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} threads"


def skip_unless_backend(op: str, backend: str, device: str, dtype: torch.dtype | None = None) -> None:
    """Skip the calling benchmark, with the reason, unless ``backend`` can time ``op`` here."""
    if device == "cuda" and not HAS_GPU:
        pytest.skip("no CUDA device")
    if backend == "triton" and device == "cpu":
        pytest.skip("triton on CPU is Triton's interpreter: a correctness tool, excluded from timing")
    ok, why = backend_status(device).get(backend, (False, f"backend {backend!r} is not registered"))
    if not ok:
        pytest.skip(f"backend {backend!r} unavailable on {device}: {why}")
    b = get_backend(backend)
    if op not in b.ops:
        pytest.skip(f"backend {backend!r} does not implement {op!r} yet")
    if dtype is not None and dtype not in b.dtypes.get(device, ()):
        pytest.skip(f"backend {backend!r} does not support {dtype} on {device}")


def backend_params() -> list[str]:
    """Every backend name; the reference first so a group's output reads as a comparison."""
    return [REFERENCE] + [b for b in BACKEND_NAMES if b != REFERENCE]


def best_backend(op: str, device: str, dtype=torch.float32) -> str:
    """The backend the public API would pick for ``op`` here, never the interpreted Triton."""
    for b in hfkernels.available_backends(device):
        if b == "triton" and device == "cpu":
            continue
        be = get_backend(b)
        if op in be.ops and dtype in be.dtypes.get(device, ()):
            return b
    return REFERENCE


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def shape_str(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


def long_case(request, why: str) -> None:
    """Skip a case that takes minutes on the CPU unless ``--hfk-long`` (or HFK_BENCH_LONG=1)."""
    if MAIN_DEVICE == "cpu" and not request.config.getoption("--hfk-long"):
        pytest.skip(f"long CPU case ({why}); run it with --hfk-long")


def skip_emulated_bf16(device: str) -> None:
    """Skip a bf16-autocast case on a CPU that only emulates bfloat16 (no AVX512-BF16/AMX):
    there the paper's U-Net takes minutes per call, and the figure says nothing about the kernels."""
    if device != "cpu":
        return
    from hfkernels.core.backends import cpu_bf16

    native, desc = cpu_bf16()
    if not native:
        pytest.skip(f"bfloat16 is emulated on this CPU ({desc}): bf16 autocast of the U-Net takes "
                    "minutes per call and measures the emulation, not hfkernels")


def scaled_note(gpu_shape, cpu_shape) -> str:
    """The ``shape_note`` for a set-up that runs at ``cpu_shape`` here instead of ``gpu_shape``."""
    if HAS_GPU:
        return f"GPU shape {shape_str(gpu_shape)} (as in the paper)"
    return f"scaled CPU shape {shape_str(cpu_shape)} (the paper's GPU shape is {shape_str(gpu_shape)}; no GPU here)"


# ---------------------------------------------------------------------------------------------
# Timing and memory


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_median(fn, device: str, rounds: int = 5, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``rounds`` calls after ``warmup`` calls (device synced)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# glibc keeps freed blocks for reuse, so the RSS of a process that already ran a workload barely
# moves when it runs it again. malloc_trim(0) hands the pages of every free block back to the
# kernel (they stay in malloc's lists), so during a measurement RSS grows with what is really used.
@functools.lru_cache(maxsize=None)
def _libc():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (macOS, musl): RSS as it comes
        return None


def _trim_heap() -> None:
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class PeakMemory:
    """Context manager: peak memory of the enclosed code, in bytes, by the device's own counter.

    ``peak``: the counter's high-water mark while inside (CUDA: bytes allocated by torch; CPU:
    resident set of the whole process). ``extra``: ``peak`` minus the value on entry, i.e. what
    the enclosed code added on top of what was already held (inputs, model weights). ``method``
    names the counter used.
    """

    def __init__(self, device: str):
        self.device = str(device)
        self.peak = self.extra = 0
        self.method = ""

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _trim_heap()
        rss = _status_kb("VmRSS")
        self.base = (rss or 0) * 1024
        self._sampler = None
        if rss is not None and _reset_rss_peak():
            self.method = "peak RSS (VmHWM)"
        else:
            import resource

            # ru_maxrss only grows, so sample the current RSS instead (1 ms period).
            self.method = "peak RSS (sampled)"
            self._samples = [self.base]
            self._stop = threading.Event()

            def sample():
                while not self._stop.wait(0.001):
                    kb = _status_kb("VmRSS")
                    if kb is None:
                        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                    self._samples.append(kb * 1024)

            self._sampler = threading.Thread(target=sample, daemon=True)
            self._sampler.start()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        elif self._sampler is None:
            self.peak = (_status_kb("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            self._sampler.join()
            self.peak = max(self._samples + [(_status_kb("VmRSS") or 0) * 1024])
        self.extra = max(0, self.peak - self.base)
        return False


def peak_memory(fn, device: str) -> PeakMemory:
    with PeakMemory(device) as pm:
        fn()
    return pm


def mb(nbytes: float) -> float:
    return round(nbytes / 2**20, 2)


# ---------------------------------------------------------------------------------------------
# The per-benchmark recorder


class Recorder:
    """Times one set-up with pytest-benchmark and writes its ``extra_info``.

    ``rec.describe(...)`` names the set-up, ``rec.run(fn, rounds)`` benchmarks the callable and
    measures its peak memory, ``rec.compare(ref_fn)`` times the reference of the same set-up in
    this process and records the ratio, ``rec.target(...)`` checks a speed target.
    """

    def __init__(self, benchmark, request):
        self.benchmark = benchmark
        self.request = request
        self.info = benchmark.extra_info
        self.seconds: float | None = None
        self.device = "cpu"
        self.fn = None
        self.memory: PeakMemory | None = None

    def describe(self, *, op, shape, dtype, backend, device, mode=None, shape_note=None, paper=None,
                 group=None, **more):
        """Fill ``extra_info`` (and the pytest-benchmark group, default: op, mode, device, shape, dtype)."""
        self.device = device
        self.benchmark.group = group or " ".join(
            str(p) for p in (op, mode, device, shape if isinstance(shape, str) else shape_str(shape),
                             dtype_name(dtype) if isinstance(dtype, torch.dtype) else dtype) if p
        )
        self.info.update(
            op=op,
            shape=shape_str(shape) if not isinstance(shape, str) else shape,
            dtype=dtype_name(dtype) if isinstance(dtype, torch.dtype) else str(dtype),
            backend=backend,
            device=device,
            device_name=device_name(device),
            threads=torch.get_num_threads(),
            # other work on the machine inflates times (ratios are interleaved to resist it)
            loadavg_1m=_loadavg(),
        )
        if mode:
            self.info["mode"] = mode
        if shape_note:
            self.info["shape_note"] = shape_note
        if paper:
            self.info["paper"] = paper
        self.info.update(more)

    def _synced(self, fn):
        dev = self.device

        def call():
            out = fn()
            sync(dev)
            return out

        return call

    def run(self, fn, rounds: int = 10, warmup: int = 1, memory: bool = True):
        """Benchmark ``fn`` (device-synchronised), then measure its peak memory in one more call."""
        call = self._synced(fn)
        self.fn = call
        out = self.benchmark.pedantic(call, rounds=rounds, warmup_rounds=warmup, iterations=1)
        stats = getattr(self.benchmark, "stats", None)
        if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.rounds:
            self.seconds = stats.stats.median
        else:  # --benchmark-disable: time it ourselves so the figures still mean something
            self.seconds = time_median(call, self.device, rounds=max(3, rounds // 2), warmup=0)
        self.info["median_ms"] = round(self.seconds * 1e3, 4)
        if memory:
            self.memory = peak_memory(call, self.device)
            self.info.update(peak_mem_mb=mb(self.memory.peak), peak_extra_mb=mb(self.memory.extra),
                             mem_counter=self.memory.method)
        return out

    def compare(self, ref_fn, rounds: int = 10, name: str = REFERENCE, info_key: str = "ratio",
                memory: bool = False, warmup: bool = True) -> float:
        """Time ``ref_fn`` against the benchmarked callable, interleaved, in this process.

        The two alternate, so a burst of load on a shared machine hits both alike. Records
        ``info[info_key]``: the median over rounds of ``reference time / own time`` of adjacent
        calls; ``info[info_key + "_best"]``: best reference time / best own time. Returns the first.
        """
        ref = self._synced(ref_fn)
        mine = self.fn
        if warmup:
            ref()
            mine()
        t_ref, t_me = [], []
        for _ in range(rounds):
            for f, acc in ((ref, t_ref), (mine, t_me)):
                t0 = time.perf_counter()
                f()
                acc.append(time.perf_counter() - t0)
        ratio = statistics.median(r / m for r, m in zip(t_ref, t_me))
        self.info[info_key] = round(ratio, 3)
        self.info[f"{info_key}_best"] = round(min(t_ref) / min(t_me), 3)
        self.info[f"{info_key}_reference"] = name
        self.info[f"{info_key}_reference_ms"] = round(statistics.median(t_ref) * 1e3, 4)
        if memory:
            pm = peak_memory(ref, self.device)
            self.info[f"{info_key}_reference_peak_mem_mb"] = mb(pm.peak)
            self.info[f"{info_key}_reference_peak_extra_mb"] = mb(pm.extra)
            if self.memory is not None and pm.extra:
                self.info[f"{info_key}_peak_extra_mem"] = round(self.memory.extra / pm.extra, 3)
        return ratio

    def is_reference(self):
        """For the reference's own row: ratio 1 by definition."""
        self.info.update(ratio=1.0, ratio_reference=REFERENCE, ratio_reference_ms=self.info.get("median_ms"))

    def target(self, label: str, ratio: float, minimum: float, against: str = REFERENCE):
        """Check ``ratio >= minimum``; fail (or, with ``--hfk-targets=report``, only record)."""
        met = bool(ratio >= minimum)
        targets = self.info.setdefault("targets", [])
        targets.append({"label": label, "ratio": round(ratio, 3), "min": minimum, "against": against, "met": met})
        self.info["target_met"] = all(t["met"] for t in targets)
        if not met and self.request.config.getoption("--hfk-targets") == "check":
            pytest.fail(f"{label}: {ratio:.2f}x vs {against}, target >= {minimum:g}x", pytrace=False)
        return met


@pytest.fixture
def rec(benchmark, request):
    return Recorder(benchmark, request)


def rand(shape, device, dtype=torch.float32, requires_grad=False, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    t = (torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)
