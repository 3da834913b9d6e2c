"""``hfkernels info``: versions, devices, and which backends can run (and why not)."""
from __future__ import annotations

import platform

import torch


def register(sub):
    p = sub.add_parser("info", help="versions, devices and available backends",
                       description="Print the versions of hfkernels, Python, torch and Triton, the default "
                                   "guidance, and for each device which backends run there (and why not).")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import __version__
    from ..core.backends import backend_status, env_preference
    from ..guidance import describe_default

    try:
        import triton

        tv = triton.__version__
    except Exception as e:  # noqa: BLE001
        tv = f"not importable ({type(e).__name__})"
    print(f"hfkernels {__version__}")
    print(f"python    {platform.python_version()} ({platform.machine()})")
    print(f"torch     {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    print(f"triton    {tv}")
    print(f"guide     {describe_default()}")
    print(f"video     {_video_io()}")
    devices = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for d in devices:
        name = torch.cuda.get_device_name(d) if d.startswith("cuda") else platform.processor() or "cpu"
        print(f"\ndevice {d} ({name}), threads={torch.get_num_threads()}")
        for b, (ok, why) in backend_status(d).items():
            print(f"  {'yes' if ok else 'no ':3}  {b:7} {why}")
        _print_env_preference(d, env_preference(d))
    return 0


def _video_io() -> str:
    from ..video.io import av_version

    v = av_version()
    return f"PyAV {v} (video files in and out)" if v else "no PyAV: frame folders only (pip install 'hfkernels[video]')"


def _print_env_preference(device: str, pref) -> None:
    """Where ``HFK_BACKEND`` is set: which calls on ``device`` fall back from it, and why."""
    from ..core.backends import ENV_VAR

    if pref is None:
        return
    if pref["error"]:
        print(f"  {ENV_VAR}: {pref['error']}")
        return
    if pref["unavailable"]:
        print(f"  {ENV_VAR}={pref['name']} is a preference: {pref['unavailable']}; every call on "
              f"{device} uses the automatic choice")
        return
    if not pref["fallbacks"]:
        print(f"  {ENV_VAR}={pref['name']}: used for every op and dtype")
        return
    print(f"  {ENV_VAR}={pref['name']} is a preference; these calls use another backend:")
    for op, dts, used, why in pref["fallbacks"]:
        names = ", ".join(str(t).replace("torch.", "") for t in dts)
        print(f"    {op:18} {names:35} -> {used or 'none'} ({why})")
