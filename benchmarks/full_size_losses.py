"""Full-size (1,3,480,640) window-48 SSIM loss and FusionLoss, forward+backward, against the dense
2-D-convolution transcription of the released loss (about 12-17 s a call on 2 CPU threads,
which is why `pytest benchmarks/` runs these two at a scaled shape). Run: python benchmarks/full_size_losses.py
"""
import time

import torch

import hfkernels as hk
from hfkernels.core import loss_reference as R

torch.set_num_threads(2)
x=torch.rand(1,3,480,640); y=torch.rand(1,3,480,640)
def run(f, n):
    ts=[]
    for _ in range(n):
        a=x.clone().requires_grad_(); b=y.clone().requires_grad_()
        t=time.perf_counter(); l=f(a,b); l.backward(); ts.append(time.perf_counter()-t)
    return sorted(ts)[len(ts)//2]
ref=run(lambda a,b: R.ssim_loss(a,b,48,1.5,1.0), 1)
for be in ("cpu","torch"):
    t=run(lambda a,b: hk.ssim_loss(a,b,48,backend=be), 7)
    print(f"ssim_loss w48 fwd+bwd 1x3x480x640 2 threads: dense {ref*1e3:.0f} ms, {be} {t*1e3:.1f} ms, ratio {ref/t:.0f}x", flush=True)
vis=torch.rand(1,3,480,640)*2-1; ir=torch.rand(1,1,480,640)*2-1; f=torch.rand(1,3,480,640)*2-1
def lossrun(fn, n):
    ts=[]
    for _ in range(n):
        ff=f.clone().requires_grad_()
        t=time.perf_counter(); l=fn(ff); l.backward(); ts.append(time.perf_counter()-t)
    return sorted(ts)[len(ts)//2]
ref=lossrun(lambda ff: R.fusion_loss(vis, ir, ff)[0], 1)
for be in ("cpu","torch"):
    L=hk.FusionLoss(backend=be)
    t=lossrun(lambda ff: L(vis, ir, ff), 5)
    print(f"FusionLoss fwd+bwd 1x3x480x640 2 threads: plain {ref*1e3:.0f} ms, {be} {t*1e3:.1f} ms, ratio {ref/t:.0f}x", flush=True)
