"""The trainer: guidance U-Net + pyramid fusion + fusion loss, one epoch after another.

One step (loss: ``hfkernels/loss_reference.py``; network: ``hfkernels/models.py``):

1. ``x = [luma(vis), ir] * 2 - 1`` (B, 2, H, W); ``mu, logvar, logit = net(x)`` (bf16 autocast on
   CUDA, float32 on CPU);
2. ``fused = fuse_color(vis, ir, mu)`` in [0, 1] (float32);
3. ``loss = 0.1 * FusionLoss(vis', ir', fused') + 1e-5 * KL(logit, logvar)`` with primes meaning
   mapped to [-1, 1], and KL taken on the pre-sigmoid output (see :func:`hfkernels.models.kl_term`);
4. AdamW (lr 1e-4, weight decay 1e-4), gradients accumulated over ``accum`` batches, norm
   clipped to 1.0.

The guide kind (``guide``, see :mod:`hfkernels.models`) is ``"residual"`` by default: the
network starts as the heuristic guidance and learns a correction to its logit; ``"scratch"`` is
the paper's network, which starts at ``mu = 0.5``. The KL term regularises the network's raw
output in both (the logit for scratch, the correction for residual).

``time_budget`` (seconds) stops training after the first optimizer step past that much training
time (forward, backward and optimizer steps, BatchNorm re-estimation; not evaluation or
checkpoints), counted over the whole run including the epochs before a resume; the stopped epoch
is evaluated and checkpointed like a full one (``"stopped_by_budget": true`` in its record), and
a resumed run starts the next epoch.

Test sets are evaluated at their native resolution whatever ``max_size`` does to the training
images (the published protocol); ``eval_max_size`` downscales them too, if wanted.

After every epoch (on rank 0): evaluation of every test set with the metrics suite, a contact
sheet, an atomic checkpoint and a record appended to ``RUN/history.json``. Under ``torchrun`` the
model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA) and each process takes
its share of the batches.

Set ``HFK_SAVE_RANK_WEIGHTS=1`` to make every process write ``RUN/rank<r>.safetensors`` with the
weights it ended with (tests use it to check that DDP processes agree).

Reproducibility: the weights are initialised from ``seed`` and the batch order of epoch ``e``
depends only on ``(seed, e)``, so a run resumed from epoch k follows the same path as one that
never stopped (bit for bit on CPU).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import checkpoint as ckpt
from .models import GuidanceUNet, count_parameters, guidance_input, kl_term

DEFAULT_OUT = "runs/default"
#: learning rate and epochs of the built-in demo (no data given); see TrainConfig.resolve
DEMO_LR = 1e-3
DEMO_EPOCHS = 4
#: the guide kind of new runs (see hfkernels.models); a saved run config without one is "scratch"
DEFAULT_GUIDE = "residual"
#: the epoch limit of a run that has a time budget but no --epochs
BUDGET_EPOCHS = 1_000_000


@dataclass
class TrainConfig:
    """Everything a run needs; saved in ``RUN/config.json`` (``"train"``)."""

    data: list = field(default_factory=list)  # data arguments (see hfkernels.data); empty: synthetic
    test: list = field(default_factory=list)  # test sets; empty with synthetic data: a synthetic test set
    epochs: int | None = None  # None: 2 with --data (the paper's recipe), DEMO_EPOCHS without
    preset: str = "tiny"
    guide: str = DEFAULT_GUIDE  # "residual" (starts as the heuristic) or "scratch" (the paper's network)
    batch_size: int = 8
    max_size: int | None = None  # downscale training images to this longer side (None: native)
    eval_max_size: int | None = None  # downscale test images too (None: evaluate at native resolution)
    time_budget: float | None = None  # seconds of training after which the run stops (None: no limit)
    device: str | None = None  # default: cuda if available
    accum: int = 1
    seed: int = 0
    out: str = DEFAULT_OUT
    lr: float | None = None  # None: 1e-4 with data (the paper's recipe), DEMO_LR without
    weight_decay: float = 1e-4
    clip: float = 1.0
    kl_weight: float = 1e-5
    loss_scale: float = 0.1
    levels: int = 4
    backend: str | None = None
    metrics: list | None = None  # metric names for the evaluation (None: the suite's default)
    eval_limit: int | None = None  # at most this many pairs per test set (None: all)
    sheet_pairs: int = 4
    synthetic_pairs: int = 48
    synthetic_size: tuple = (96, 128)
    cache: str | bool = "auto"
    num_workers: int = 0
    baseline: bool = True  # evaluate the heuristic guidance once, for comparison
    bn_batches: int = 16  # training batches that re-estimate BatchNorm statistics after each epoch (0: off)
    report: bool = True  # write the results page RUN/report/index.html at the end of the run
    report_limit: int | None = None  # pairs per test set with pictures on that page (None: all)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["data"] = [str(x) for x in self.data]
        d["test"] = [str(x) for x in self.test]
        d["synthetic_size"] = list(self.synthetic_size)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        # runs saved before guide kinds existed trained the paper's network
        d.setdefault("guide", "scratch")
        if "synthetic_size" in d:
            d["synthetic_size"] = tuple(d["synthetic_size"])
        return cls(**d)

    def resolve(self) -> "TrainConfig":
        """Fill the defaults that depend on whether data is given (in place; returns self).

        The paper's recipe (lr 1e-4, 2 epochs) is for a 17 M-parameter network and a thousand
        full-resolution pairs; the built-in demo trains the tiny network on 48 small generated
        pairs, where it needs larger steps and a few more epochs to show what it learns.
        """
        if self.lr is None:
            self.lr = 1e-4 if self.data else DEMO_LR
        if self.epochs is None:
            if self.time_budget is not None:
                self.epochs = BUDGET_EPOCHS  # the budget decides
            else:
                self.epochs = 2 if self.data else DEMO_EPOCHS
        return self

    def validate(self) -> None:
        from .models import GUIDES, PRESETS

        if self.time_budget is not None:
            if isinstance(self.time_budget, bool) or not isinstance(self.time_budget, (int, float)) \
                    or not self.time_budget > 0 or self.time_budget == float("inf"):
                raise ValueError(f"time_budget must be a finite number of seconds > 0, got {self.time_budget!r}")
        self.resolve()
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.guide not in GUIDES:
            raise ValueError(f"guide must be one of {', '.join(GUIDES)}, got {self.guide!r}")
        for name in ("epochs", "batch_size", "accum", "synthetic_pairs", "levels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("max_size", "eval_max_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if self.lr <= 0 or self.clip <= 0:
            raise ValueError(f"lr and clip must be > 0, got lr={self.lr}, clip={self.clip}")


class Distributed:
    """Process-group facts (a single process when not launched by torchrun)."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = device
        self.owns_group = False
        if self.world > 1:
            if device.type == "cuda":
                self.device = torch.device("cuda", self.local_rank)
                torch.cuda.set_device(self.device)
            else:
                # share the cores between the local processes instead of oversubscribing them
                local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            if not dist.is_initialized():
                # rank 0 evaluates alone after each epoch while the others wait: allow long waits
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                        timeout=datetime.timedelta(hours=3))
                self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """All-reduce sums of a few floats (identity in one process)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average floating buffers (BatchNorm running statistics) over the processes.

        DDP copies rank 0's buffers to the others at the start of every forward, but each rank's
        last forward of an epoch updates its own copy; averaging makes every rank hold the same
        (and better: estimated from all ranks' batches) statistics for evaluation and checkpoints.
        """
        if self.world == 1:
            return
        with torch.no_grad():
            for buf in model.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf)
                    buf.div_(self.world)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def _print(*a, **k):
    print(*a, **k, flush=True)


class Trainer:
    """Builds data, model and optimizer from a :class:`TrainConfig`; :meth:`fit` trains.

    Attributes after :meth:`fit`: ``model`` (the bare :class:`GuidanceUNet`), ``history`` (list of
    epoch records), ``run_dir``.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, log=_print):
        config.validate()
        self.cfg, self.resume, self.progress = config, resume, progress
        want = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(want)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' asked for, but torch sees no CUDA device here")
        self.dist = Distributed(device)
        self.device = self.dist.device
        self.log = log if self.dist.main else (lambda *a, **k: None)
        self.run_dir = Path(config.out)
        self._prepare_run_dir(overwrite)
        self.history: list[dict] = []
        self.start_epoch = 0

    # ----------------------------------------------------------------- run folder
    def _prepare_run_dir(self, overwrite: bool) -> None:
        run = self.run_dir
        if ckpt.has_checkpoint(run) and not self.resume:
            if not overwrite:
                raise ValueError(
                    f"--out {run} already holds a training run; pass --resume to continue it, "
                    f"--overwrite to replace it, or choose another --out"
                )
            if self.dist.main:
                self.log(f"replacing the earlier run in {run}")
                for p in list(run.glob("*.safetensors")) + [run / n for n in (
                        ckpt.CHECKPOINT_JSON, ckpt.CONFIG_JSON, "history.json", "baseline.json")]:
                    p.unlink(missing_ok=True)
                shutil.rmtree(run / "sheets", ignore_errors=True)
                shutil.rmtree(run / "report", ignore_errors=True)
        self.dist.barrier()

    # ----------------------------------------------------------------- set-up
    def _build(self) -> None:
        cfg = self.cfg
        from .data import BatchLoader, PairDataset

        if cfg.data:
            self.train_set = PairDataset(cfg.data, max_size=cfg.max_size, split="train")
            tests = [(str(t), PairDataset(t, max_size=cfg.eval_max_size, split="test")) for t in cfg.test]
        else:
            from .synthetic import SyntheticPairs

            self.train_set = SyntheticPairs(cfg.synthetic_pairs, cfg.synthetic_size, seed=cfg.seed)
            tests = [(str(t), PairDataset(t, max_size=cfg.eval_max_size, split="test")) for t in cfg.test]
            if not tests:
                n = max(cfg.sheet_pairs, 4)
                tests = [("synthetic-test", SyntheticPairs(n, cfg.synthetic_size, seed=cfg.seed + 7919,
                                                           name="synthetic-test"))]
        # name each test set by what it holds (e.g. "MSRS-test", "Harvard/CT-MRI+...")
        self.test_sets = [(getattr(ds, "name", label) or label, ds) for label, ds in tests]
        self.loader = BatchLoader(self.train_set, cfg.batch_size, self.device, cfg.cache, cfg.num_workers,
                                  cfg.seed, True, self.dist.rank, self.dist.world)

        torch.manual_seed(cfg.seed)  # identical initial weights in every process
        model = GuidanceUNet(in_channels=2, out_channels=2, preset=cfg.preset, guide=cfg.guide).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        from . import FusionLoss

        self.loss_fn = FusionLoss(backend=cfg.backend)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)

        if self.resume and ckpt.has_checkpoint(self.run_dir):
            state = ckpt.load_checkpoint(self.run_dir, map_location="cpu")
            saved = dict(state["config"] or {}, guide=state["guide"])
            if state["config"] and saved != model.config():
                raise ValueError(
                    f"{self.run_dir} holds a {state['config']} model, but this run builds {model.config()}"
                )
            model.load_state_dict(state["model"])
            if state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch = state["epoch"]
            hist = self.run_dir / "history.json"
            if hist.is_file():
                # records after the checkpoint belong to an epoch that did not finish its checkpoint
                self.history = [r for r in ckpt.read_json(hist) if r["epoch"] <= self.start_epoch]
            self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")
        elif self.resume:
            self.log(f"--resume: no checkpoint in {self.run_dir} yet, starting from scratch")

        self.net = model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DDP(model, device_ids=ids)

    def _write_config(self) -> None:
        if not self.dist.main:
            return
        ckpt.atomic_write_json(self.run_dir / ckpt.CONFIG_JSON, {
            "format": ckpt.FORMAT,
            "model": self.model.config(),
            "parameters": count_parameters(self.model),
            "train": self.cfg.to_json(),
            "world_size": self.dist.world,
        })

    # ----------------------------------------------------------------- one step
    def step_loss(self, vis: torch.Tensor, ir: torch.Tensor, net=None):
        """Loss of one batch: ``(total, terms)``; vis (B,3,H,W), ir (B,1,H,W) in [0,1]."""
        from .fusion import fuse_color

        net = net or self.net
        x = guidance_input(vis, ir)
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            mu, logvar, logit = net(x, return_logit=True)
        mu = mu.float().contiguous()
        fused = fuse_color(vis, ir, mu, self.cfg.levels, backend=self.cfg.backend)
        main, terms = self.loss_fn(vis * 2 - 1, ir * 2 - 1, fused * 2 - 1, return_terms=True)
        kl = kl_term(logit, logvar)
        total = self.cfg.loss_scale * main + self.cfg.kl_weight * kl
        terms = {k: float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for k, v in terms.items()}
        terms["kl"] = float(kl.detach())
        return total, terms

    def train_epoch(self, epoch: int) -> dict:
        """One epoch (``epoch`` counts from 1). Returns the training part of its history record."""
        from tqdm import tqdm

        cfg = self.cfg
        self.net.train()
        batches = self.loader.batches(epoch)
        n_steps = len(batches)
        # micro-batch groups of `accum` batches; the last group may be shorter
        group_len = [min(cfg.accum, n_steps - (i // cfg.accum) * cfg.accum) for i in range(n_steps)]
        desc = f"epoch {epoch}" + (f"/{cfg.epochs}" if cfg.epochs < BUDGET_EPOCHS else "")
        bar = tqdm(total=n_steps, desc=desc, unit="batch", leave=False,
                   disable=not (self.progress and self.dist.main), dynamic_ncols=True, file=sys.stderr)
        loss_sum, n_img, term_sums = 0.0, 0, {}
        stopped, done = False, 0
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (_, vis, ir) in enumerate(self.loader.epoch(epoch)):
            last_of_group = (i + 1) % cfg.accum == 0 or i + 1 == n_steps
            sync = self.dist.world == 1 or last_of_group
            ctx = self.net.no_sync() if not sync else _nullcontext()
            with ctx:
                total, terms = self.step_loss(vis, ir)
                if not torch.isfinite(total):
                    raise FloatingPointError(f"non-finite loss {float(total)} at epoch {epoch}, batch {i + 1}")
                (total / group_len[i]).backward()
            if last_of_group:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if cfg.time_budget is not None:
                    spent = self.trained_seconds() + time.perf_counter() - t0
                    # every process must stop at the same step: any one past the budget stops all
                    stopped = self.dist.sum(float(spent >= cfg.time_budget))[0] > 0
            done = i + 1
            b = vis.shape[0]
            loss_sum += float(total.detach()) * b
            n_img += b
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + v * b
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_img:.4f}", img_s=f"{n_img / (time.perf_counter() - t0):.1f}")
            if stopped:
                break
        bar.close()
        if cfg.bn_batches > 0:
            self.recalibrate_batchnorm(epoch)
        self.dist.average_buffers(self.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        sums = self.dist.sum(loss_sum, float(n_img), *[term_sums[k] for k in sorted(term_sums)])
        loss_sum, n_total = sums[0], sums[1]
        terms = {k: v / n_total for k, v in zip(sorted(term_sums), sums[2:])}
        record = {"epoch": epoch, "train_loss": loss_sum / n_total, "seconds": seconds,
                  "images": int(n_total), "images_per_second": n_total / seconds, "batches": done,
                  "optimizer_steps": -(-done // cfg.accum),
                  "loss_terms": terms}
        if stopped:
            record["stopped_by_budget"] = True
        return record

    def trained_seconds(self) -> float:
        """Training seconds of the epochs in ``history`` (those before a resume included)."""
        return sum(r.get("seconds", 0.0) for r in self.history)

    def budget_spent(self) -> bool:
        b = self.cfg.time_budget
        return b is not None and self.trained_seconds() >= b

    @torch.no_grad()
    def recalibrate_batchnorm(self, epoch: int) -> None:
        """Re-estimate the BatchNorm running statistics of the current weights.

        The running averages (momentum 0.1) mix statistics of weights from many steps ago; after a
        short run (the paper's "2 epochs") they lag far behind the weights, and the network in
        eval mode predicts a nearly flat ``mu``. So after each epoch, forward (no gradients)
        ``bn_batches`` training batches and store their plain average (momentum None). Only the
        buffers used at inference change; training itself is unaffected.
        """
        model = self.model
        bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        model.train()
        for k, (_, vis, ir) in enumerate(self.loader.epoch(epoch)):
            if k >= self.cfg.bn_batches:
                break
            x = guidance_input(vis, ir)
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                model(x)
        for m, (mom, n) in zip(bns, saved):
            m.momentum = mom
            m.num_batches_tracked.copy_(n)

    # ----------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, guidance=None) -> dict:
        """Metric means per test set: ``{set: {metric: mean}}``. ``guidance``: ``f(vis, ir) -> mu``
        (default: the model in eval mode)."""
        from .fusion import fuse_color
        from .metrics import evaluate as metrics_evaluate

        if guidance is None:
            guidance = self.guidance_fn()
        out = {}
        for name, ds in self.test_sets:
            n = len(ds) if self.cfg.eval_limit is None else min(len(ds), self.cfg.eval_limit)
            sums: dict[str, float] = {}
            for i in range(n):
                vis, ir = (t[None].to(self.device).float() / 255 for t in ds[i])
                mu = guidance(vis, ir).float()
                fused = fuse_color(vis, ir, mu, self.cfg.levels, backend=self.cfg.backend)
                vals = metrics_evaluate(vis, ir, fused, names=self.cfg.metrics)
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + float(v.double().sum())
            out[name] = {k: v / n for k, v in sums.items()}
        return out

    def guidance_fn(self):
        model = self.model
        model.eval()
        dev = self.device

        def mu_fn(vis, ir):
            x = guidance_input(vis, ir)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                return model(x)[0].float()

        return mu_fn

    @torch.no_grad()
    def contact_sheet(self, path: Path, row_height: int = 128) -> Path | None:
        """PNG with one row per pair: visible | infrared | guidance map | fused."""
        from .fusion import fuse_color
        from .io import write_image

        if not self.test_sets or self.cfg.sheet_pairs < 1:
            return None
        ds = self.test_sets[0][1]
        mu_fn = self.guidance_fn()
        rows = []
        for i in range(min(self.cfg.sheet_pairs, len(ds))):
            vis, ir = (t[None].to(self.device).float() / 255 for t in ds[i])
            mu = mu_fn(vis, ir)
            fused = fuse_color(vis, ir, mu, self.cfg.levels, backend=self.cfg.backend)
            tiles = [vis, ir.expand(-1, 3, -1, -1), mu.expand(-1, 3, -1, -1), fused]
            h, w = vis.shape[-2:]
            size = (row_height, max(1, round(w * row_height / h)))
            tiles = [F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False) for t in tiles]
            sep = torch.ones(1, 3, row_height, 2, device=vis.device)
            rows.append(torch.cat([tiles[0], sep, tiles[1], sep, tiles[2], sep, tiles[3]], dim=3))
        width = max(r.shape[-1] for r in rows)
        rows = [F.pad(r, [0, width - r.shape[-1], 0, 2], value=1.0) for r in rows]
        write_image(path, torch.cat(rows, dim=2)[0].clamp(0, 1).cpu())
        return path

    # ----------------------------------------------------------------- main loop
    def fit(self) -> list[dict]:
        """Train up to ``cfg.epochs`` epochs (counting epochs already in the checkpoint), or until
        ``cfg.time_budget`` seconds of training are spent."""
        cfg = self.cfg
        self._build()
        self._write_config()
        nparams = count_parameters(self.model)
        sizes = sorted(set(self.train_set.sizes))
        size_txt = f"{sizes[0][0]}x{sizes[0][1]}" if len(sizes) == 1 else f"{len(sizes)} sizes"
        self.log(
            f"training {cfg.preset} {cfg.guide} U-Net ({nparams:,} parameters) on {len(self.train_set)} pairs of "
            f"{getattr(self.train_set, 'name', 'data')} ({size_txt}), batch {cfg.batch_size}"
            f"{f' x {cfg.accum} accumulated' if cfg.accum > 1 else ''}"
            f"{f' x {self.dist.world} processes' if self.dist.world > 1 else ''}, on {self.device}"
            f"{' (bf16 autocast)' if self.device.type == 'cuda' else ''}"
            f"{f', for {cfg.time_budget:g} s of training' if cfg.time_budget is not None else ''}; "
            f"run folder {self.run_dir}"
        )
        if self.start_epoch >= cfg.epochs:
            self.log(f"{self.run_dir} has already trained {self.start_epoch} epoch(s) (--epochs {cfg.epochs}); nothing to do")
            return self.history
        if self.budget_spent():
            self.log(f"{self.run_dir} has already trained {self.trained_seconds():.1f} s "
                     f"(--time-budget {cfg.time_budget:g}); nothing to do")
            return self.history
        baseline_path = self.run_dir / "baseline.json"
        if self.dist.main and cfg.baseline and self.test_sets and not baseline_path.is_file():
            from .fusion import heuristic_guidance

            ckpt.atomic_write_json(baseline_path, {"heuristic": self.evaluate(heuristic_guidance)})
        self.dist.barrier()
        t_run = time.perf_counter()
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            record = self.train_epoch(epoch)
            if self.dist.main:
                t1 = time.perf_counter()
                record["eval"] = self.evaluate() if self.test_sets else {}
                sheet = self.contact_sheet(self.run_dir / "sheets" / f"epoch_{epoch:04d}.png")
                record["eval_seconds"] = time.perf_counter() - t1
                record["sheet"] = str(sheet.relative_to(self.run_dir)) if sheet else None
                self.history.append(record)
                # history first: a record newer than the checkpoint is dropped on resume, so a
                # kill between the two writes never loses a completed epoch's record
                ckpt.atomic_write_json(self.run_dir / "history.json", self.history)
                ckpt.save_checkpoint(self.run_dir, self.model, self.optimizer, epoch,
                                     extra={"train_loss": record["train_loss"]})
                self.log(_epoch_line(record))
            self.dist.barrier()
            if record.get("stopped_by_budget"):
                self.log(f"time budget of {cfg.time_budget:g} s reached after {epoch} epoch(s) "
                         f"({record['batches']} batches of the last)")
                break
        self.total_seconds = time.perf_counter() - t_run
        if os.environ.get("HFK_SAVE_RANK_WEIGHTS"):
            # a debugging/test hook: every process writes the weights it ended with
            from safetensors.torch import save as st_save

            ckpt.atomic_write_bytes(self.run_dir / f"rank{self.dist.rank}.safetensors",
                                    st_save(ckpt.model_tensors(self.model)))
        if self.dist.main and cfg.report:
            from .report import training_report

            t_rep = time.perf_counter()
            page = training_report(self, cfg.report_limit, progress=self.progress)
            if page is not None:
                self.log(f"results page {page} ({time.perf_counter() - t_rep:.1f} s)")
        if self.dist.main:
            self.log(self.summary())
        return self.history

    def summary(self) -> str:
        """The table printed at the end of a run."""
        lines = [f"done: {len(self.history)} epoch(s) in {self.run_dir}"]
        base = {}
        bp = self.run_dir / "baseline.json"
        if bp.is_file():
            base = ckpt.read_json(bp).get("heuristic", {})
        for set_name in (self.history[-1].get("eval", {}) if self.history else {}):
            names = list(self.history[-1]["eval"][set_name])
            show = [n for n in names if n in ("EN", "MI", "VIF", "Qabf", "SSIM", "SD", "SF", "AG")] or names[:6]
            lines.append(f"  {set_name}:  " + "".join(f"{n:>9}" for n in show))
            if set_name in base:
                lines.append(f"    {'heuristic':>10} " + "".join(f"{base[set_name].get(n, float('nan')):9.3f}" for n in show))
            for r in self.history:
                ev = r.get("eval", {}).get(set_name, {})
                lines.append(f"    {'epoch ' + str(r['epoch']):>10} " + "".join(f"{ev.get(n, float('nan')):9.3f}" for n in show))
        last = self.history[-1] if self.history else None
        if last:
            lines.append(f"  train loss {self.history[0]['train_loss']:.4f} (epoch {self.history[0]['epoch']}) -> "
                         f"{last['train_loss']:.4f} (epoch {last['epoch']}); {last['images_per_second']:.1f} images/s")
            lines.append(f"  checkpoint  {self.run_dir / ckpt.CHECKPOINT_JSON} (+ model-e{last['epoch']:04d}.safetensors)")
            lines.append(f"  history     {self.run_dir / 'history.json'}")
            if last.get("sheet"):
                lines.append(f"  sheet       {self.run_dir / last['sheet']}  (visible | infrared | mu | fused)")
            lines.append(f"  next: hfkernels fuse --checkpoint {self.run_dir} --vis VIS_DIR --ir IR_DIR --out fused/")
        return "\n".join(lines)

    def close(self) -> None:
        self.dist.close()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _epoch_line(r: dict) -> str:
    ev = "; ".join(
        f"{name}: " + " ".join(f"{k} {v:.3f}" for k, v in list(vals.items())[:5]) for name, vals in r.get("eval", {}).items()
    )
    return (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, {r['images']} images in {r['seconds']:.1f} s "
            f"({r['images_per_second']:.1f} img/s){'; ' + ev if ev else ''}")


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Trainer:
    """Run a training job; returns the :class:`Trainer` (``.model``, ``.history``, ``.run_dir``)."""
    trainer = Trainer(config, resume=resume, overwrite=overwrite, progress=progress)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


__all__ = ["TrainConfig", "Trainer", "train", "DEFAULT_OUT"]
