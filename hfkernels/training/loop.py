"""The trainer (:class:`Trainer`, :func:`train`): guidance U-Net + pyramid fusion + FusionLoss,
one epoch after another.

One step: ``mu = net([luma(vis), ir] * 2 - 1)``, ``fused = fuse_color(vis, ir, mu)`` (a
``direct`` network gives the fused luma itself), ``loss = 0.1 * FusionLoss(...) + 1e-5 * KL``,
AdamW with the lr of the guide kind. After each epoch: BatchNorm re-estimation, a recorded subset
of the test sets scored, a checkpoint (before the scoring, so no evaluation can lose an epoch)
and a record in ``RUN/history.json``; after the last, the full test sets once. ``time_budget``
covers training and the re-estimation, not evaluation. The whole schedule, the batches and the
reproducibility rules: docs/design.md, section 7.3; settings: :mod:`.config`.

``HFK_SAVE_RANK_WEIGHTS=1`` makes every process write ``RUN/rank<r>.safetensors`` with its final
weights (tests use it to check that DDP processes agree).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ..core.fusion import fuse_color, heuristic_guidance, with_luma
from ..core.losses import FusionLoss
from ..evaluation import (
    Pair,
    colour_fusion,
    means,
    pairs_from_dataset,
    score,
    spread_indices,
)
from ..guidance import checkpoint as ckpt
from ..guidance import model_guidance
from ..guidance.models import GuidanceUNet, count_parameters, forward_pair, kl_term
from ..io import PairDataset, atomic_write_bytes, atomic_write_json, read_json_file
from . import epoch_report
from .batches import BatchLoader
from .config import BUDGET_EPOCHS, DEFAULT_OUT, TrainConfig
from .distributed import Distributed
from .synthetic import SyntheticPairs

#: time of a no-gradient forward pass over that of a training step (forward, backward, optimizer),
#: for reserving the BatchNorm re-estimation inside a time budget; measured about 0.3 on a CPU
FORWARD_SHARE = 0.35


def _print(*a, **k):
    print(*a, **k, flush=True)


class Trainer:
    """Builds data, model and optimizer from a :class:`TrainConfig`; :meth:`fit` trains.

    Attributes after :meth:`fit`: ``model`` (the bare :class:`GuidanceUNet`), ``history`` (list of
    epoch records), ``run_dir``.
    """

    def __init__(self, config: TrainConfig, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, log=_print, on_epoch=None):
        config.validate()
        # called as on_epoch(epoch, record) on rank 0 after each epoch's checkpoint (a search
        # reads the validation scores there and may stop the run by raising)
        self.on_epoch = on_epoch
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
        self.train_set = (PairDataset(cfg.data, max_size=cfg.max_size, split="train") if cfg.data
                          else SyntheticPairs(cfg.synthetic_pairs, cfg.synthetic_size, seed=cfg.seed))
        tests = [(str(t), PairDataset(t, max_size=cfg.eval_max_size, split="test")) for t in cfg.test]
        if not cfg.data and not tests:
            n = max(cfg.sheet_pairs, 4)
            tests = [("synthetic-test", SyntheticPairs(n, cfg.synthetic_size, seed=cfg.seed + 7919,
                                                       name="synthetic-test"))]
        # name each test set by what it holds (e.g. "MSRS-test", "Harvard/CT-MRI+...")
        self.test_sets = [(getattr(ds, "name", label) or label, ds) for label, ds in tests]
        self.loader = BatchLoader(self.train_set, cfg.batch_size, self.device, cfg.cache, cfg.num_workers,
                                  cfg.seed, True, self.dist.rank, self.dist.world, crop=cfg.crop_size)
        # the fixed per-epoch evaluation subset of each test set (the same pairs every epoch)
        self.eval_subsets = {name: spread_indices(min(len(ds), cfg.eval_limit or len(ds)), cfg.eval_pairs)
                             for name, ds in self.test_sets}
        self.eval_rate = None  # seconds per megapixel of one fusion's evaluation, once measured

        torch.manual_seed(cfg.seed)  # identical initial weights in every process
        model = GuidanceUNet(in_channels=2, out_channels=2, preset=cfg.preset, guide=cfg.guide).to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.loss_fn = FusionLoss(**cfg.loss_kwargs(), backend=cfg.backend)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn = self.loss_fn.to(self.device)

        if self.resume and ckpt.has_checkpoint(self.run_dir):
            state = ckpt.load_checkpoint(self.run_dir, map_location="cpu")
            saved = dict(state["config"] or {}, guide=state["guide"])
            if state["config"] and saved != model.config():
                raise ValueError(
                    f"{self.run_dir} holds a {state['config']} model, but this run builds {model.config()}"
                )
            ckpt.check_state(model, state["model"], self.run_dir / ckpt.CHECKPOINT_JSON)
            model.load_state_dict(state["model"])
            if state["optimizer"] is not None:
                self.optimizer.load_state_dict(state["optimizer"])
            self.start_epoch = state["epoch"]
            hist = self.run_dir / "history.json"
            if hist.is_file():
                # records after the checkpoint belong to an epoch that did not finish its checkpoint
                self.history = [r for r in ckpt.read_history(hist) if r["epoch"] <= self.start_epoch]
            self.log(f"resuming {self.run_dir} after epoch {self.start_epoch}")
        elif self.resume:
            self.log(f"--resume: no checkpoint in {self.run_dir} yet, starting from scratch")

        self.net = self.dist.wrap(model)

    def _write_config(self) -> None:
        if not self.dist.main:
            return
        atomic_write_json(self.run_dir / ckpt.CONFIG_JSON, {
            "format": ckpt.FORMAT,
            "model": self.model.config(),
            "parameters": count_parameters(self.model),
            "train": self.cfg.to_json(),
            "world_size": self.dist.world,
        })

    # ----------------------------------------------------------------- one step
    def step_loss(self, vis: torch.Tensor, ir: torch.Tensor, net=None):
        """Loss of one batch: ``(total, terms)``; vis (B,3,H,W), ir (B,1,H,W) in [0,1]."""
        mu, logvar, logit = forward_pair(net or self.net, vis, ir, return_logit=True)
        mu = mu.float().contiguous()
        if self.model.fuses:  # guide kind "direct": the network's output is the fused luma
            fused = with_luma(vis, mu)
        else:
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
        batch_sizes: dict[str, int] = {}  # images per batch -> batches, as run (not as asked)
        crop_sizes: dict[str, int] = {}  # "HxW" of the batches -> batches
        stopped, done = False, 0
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        for i, (_, vis, ir) in enumerate(self.loader.epoch(epoch)):
            last_of_group = (i + 1) % cfg.accum == 0 or i + 1 == n_steps
            sync = self.dist.world == 1 or last_of_group
            with nullcontext() if sync else self.net.no_sync():
                total, terms = self.step_loss(vis, ir)
                if not torch.isfinite(total):
                    raise FloatingPointError(f"non-finite loss {float(total)} at epoch {epoch}, batch {i + 1}")
                (total / group_len[i]).backward()
            if last_of_group:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                if cfg.time_budget is not None:
                    now = time.perf_counter() - t0
                    # the BatchNorm re-estimation after the epoch is training time too: stop early
                    # enough for it (forward only, no gradients: about a third of a step per batch)
                    reserve = min(cfg.bn_batches, i + 1) * now / (i + 1) * FORWARD_SHARE
                    spent = self.trained_seconds() + now + reserve
                    # every process must stop at the same step: any one past the budget stops all
                    stopped = self.dist.sum(float(spent >= cfg.time_budget))[0] > 0
            done = i + 1
            b = vis.shape[0]
            loss_sum += float(total.detach()) * b
            n_img += b
            batch_sizes[str(b)] = batch_sizes.get(str(b), 0) + 1
            hw = f"{vis.shape[-2]}x{vis.shape[-1]}"
            crop_sizes[hw] = crop_sizes.get(hw, 0) + 1
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, 0.0) + v * b
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_img:.4f}", batch=f"{b}x{hw}",
                            img_s=f"{n_img / (time.perf_counter() - t0):.1f}")
            if stopped:
                break
        bar.close()
        t_bn = time.perf_counter()
        if cfg.bn_batches > 0:
            # no more batches than the epoch trained: a short (budget-cut) epoch stays short
            self.recalibrate_batchnorm(epoch, min(cfg.bn_batches, done))
        t_bn = time.perf_counter() - t_bn
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
                  # this process's batches (every process runs as many, of the same sizes but the last)
                  "batch_sizes": dict(sorted(batch_sizes.items(), key=lambda kv: -int(kv[0]))),
                  "crop_sizes": dict(sorted(crop_sizes.items(), key=lambda kv: -kv[1])),
                  "loss_terms": terms, "batchnorm_seconds": t_bn}
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
    def recalibrate_batchnorm(self, epoch: int, batches: int | None = None) -> None:
        """Re-estimate the BatchNorm running statistics of the current weights.

        The running averages (momentum 0.1) mix statistics of weights from many steps ago; after a
        short run (the paper's "2 epochs") they lag far behind the weights, and the network in
        eval mode predicts a nearly flat ``mu``. So after each epoch, forward (no gradients)
        ``batches`` (default ``bn_batches``) training batches and store their plain average
        (momentum None). Only the buffers used at inference change; training itself is unaffected.
        """
        batches = self.cfg.bn_batches if batches is None else batches
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
            if k >= batches:
                break
            forward_pair(model, vis, ir)
        for m, (mom, n) in zip(bns, saved):
            m.momentum = mom
            m.num_batches_tracked.copy_(n)

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, guidance=None) -> dict:
        """Metric means per test set over its per-epoch subset (:meth:`eval_pairs`):
        ``{set: {metric: mean}}`` of the colour fusion with ``guidance`` (``f(vis, ir) -> mu``;
        default: the model in eval mode). Measures :attr:`eval_rate` on the way."""
        guidance = self.guidance_fn() if guidance is None else guidance
        fusion = {"f": colour_fusion(guidance, self.cfg.levels, self.cfg.backend)}
        out, t0, mpx = {}, time.perf_counter(), 0.0
        for name, ds in self.test_sets:
            idx = self.eval_subsets[name]
            labels = self.pair_labels(ds, idx)
            # set-qualified names: a joined set (Harvard) may hold one file name twice
            pairs = [Pair(lab, p.load) for lab, p in zip(labels, pairs_from_dataset(ds, indices=idx))]
            # a metric a pair is too small for is NaN (not available) there, not the end of the run
            out[name] = means(score(pairs, fusion, self.cfg.metrics, device=self.device, unavailable="nan")["f"])
            mpx += sum(ds.sizes[i][0] * ds.sizes[i][1] for i in idx) / 1e6
        if mpx > 0:
            self.eval_rate = (time.perf_counter() - t0) / mpx
        return out

    @staticmethod
    def pair_labels(ds, indices) -> list[str]:
        """``SET/FILE`` names of the pairs at ``indices`` of a test set (file names alone for a
        set without files)."""
        sets, pairs = getattr(ds, "sets", None), getattr(ds, "pairs", None)
        if not sets or not pairs:
            return [str(ds.names[i]) for i in indices]
        by_dir = {Path(s.vis_dir): s.name for s in sets}
        return [f"{by_dir.get(Path(pairs[i][0]).parent, Path(pairs[i][0]).parent.name)}/{ds.names[i]}"
                for i in indices]

    def eval_pairs(self) -> dict:
        """``{test set: [SET/FILE, ...]}``: the pairs each epoch's evaluation scores."""
        return {name: self.pair_labels(ds, self.eval_subsets[name]) for name, ds in self.test_sets}

    def final_estimate(self) -> tuple[int, float | None]:
        """``(pairs, seconds or None)`` the final evaluation will score and about how long it
        takes (two fusions; from :attr:`eval_rate`, None before any evaluation ran)."""
        limit = self.cfg.eval_limit
        sizes = [s for _, ds in self.test_sets for s in ds.sizes[:limit]]
        mpx = sum(h * w for h, w in sizes) / 1e6
        return len(sizes), (2 * self.eval_rate * mpx if self.eval_rate is not None else None)

    def final_evaluation(self) -> list:
        """Score the trained and the heuristic guidance on every pair of the test sets (native
        resolution; pictures for the results page kept on the way), record the means in the last
        history record (``final_eval``) and return the :class:`hfkernels.evaluation.report.ReportSet` list."""
        from ..evaluation.report import training_sets

        n, est = self.final_estimate()
        when = f"about {est:.0f} s (from the per-epoch evaluation's pace)" if est is not None else "time unknown"
        self.log(f"final evaluation: {n} test pairs x 2 fusions (trained, heuristic), {when}; "
                 "--no-final-eval skips it")
        t0 = time.perf_counter()
        sets = training_sets(self, self.cfg.report_limit if self.cfg.report else 0, progress=self.progress)
        seconds = time.perf_counter() - t0
        labels = list(sets[0].fusions) if sets else []
        final = {"seconds": seconds, "pairs": {s.name: len(s.pairs) for s in sets}}
        for key, label in zip(("trained", "heuristic"), labels):
            final[key] = {s.name: means(s.scores[label]) for s in sets}
        if self.history:
            self.history[-1]["final_eval"] = final
            atomic_write_json(self.run_dir / "history.json", self.history)
        self.log(f"final evaluation done in {seconds:.0f} s")
        return sets

    def guidance_fn(self):
        """The model's guidance ``f(vis, ir) -> mu`` (eval mode, as trained: bf16 on CUDA)."""
        return model_guidance(self.model)

    def contact_sheet(self, path: Path) -> Path | None:
        """The epoch's sheet of the first test set (see :func:`hfkernels.epoch_report.contact_sheet`)."""
        if not self.test_sets:
            return None
        fusion = colour_fusion(self.guidance_fn(), self.cfg.levels, self.cfg.backend)
        return epoch_report.contact_sheet(path, self.test_sets[0][1], fusion, self.cfg.sheet_pairs, self.device)

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
            f"{f' (random crops of up to {cfg.crop_size}x{cfg.crop_size})' if cfg.crop_size else ' (whole images)'}"
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
        eval_pairs = self.eval_pairs()
        if self.dist.main and self.test_sets:
            n_eval = sum(len(v) for v in eval_pairs.values())
            if cfg.baseline and (not baseline_path.is_file()
                                 or read_json_file(baseline_path, dict, "heuristic baseline").get("pairs") != eval_pairs):
                atomic_write_json(baseline_path, {"heuristic": self.evaluate(heuristic_guidance),
                                                       "pairs": eval_pairs})
            mpx = sum(ds.sizes[i][0] * ds.sizes[i][1] for n, ds in self.test_sets for i in self.eval_subsets[n]) / 1e6
            each = f"about {self.eval_rate * mpx:.0f} s" if self.eval_rate is not None else "time not measured yet"
            n_final, est = self.final_estimate()
            self.log(f"evaluation: after each epoch {n_eval} test pairs ({each}; --eval-pairs, listed in history.json); "
                     + (f"after the last, all {n_final} (about {est:.0f} s; --no-final-eval)" if cfg.final_eval and est
                        else f"after the last, all {n_final}" if cfg.final_eval else "no final evaluation"))
        self.dist.barrier()
        t_run = time.perf_counter()
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            record = self.train_epoch(epoch)
            if self.dist.main:
                # the epoch's record and weights before its evaluation, so an evaluation that
                # fails (or a kill during it) loses no training; history first: a record newer
                # than the checkpoint is dropped on resume
                self.history.append(record)
                atomic_write_json(self.run_dir / "history.json", self.history)
                ckpt.save_checkpoint(self.run_dir, self.model, self.optimizer, epoch,
                                     extra={"train_loss": record["train_loss"], "lr": cfg.lr,
                                            "loss_weights": cfg.loss_kwargs()})
                t1 = time.perf_counter()
                record["eval"] = self.evaluate() if self.test_sets else {}
                record["eval_pairs"] = eval_pairs
                sheet = self.contact_sheet(self.run_dir / "sheets" / f"epoch_{epoch:04d}.png")
                record["eval_seconds"] = time.perf_counter() - t1
                record["sheet"] = str(sheet.relative_to(self.run_dir)) if sheet else None
                atomic_write_json(self.run_dir / "history.json", self.history)
                self.log(epoch_report.epoch_line(record))
                if self.on_epoch is not None:
                    self.on_epoch(epoch, record)
            self.dist.barrier()
            if record.get("stopped_by_budget"):
                self.log(f"time budget of {cfg.time_budget:g} s reached after {epoch} epoch(s) "
                         f"({record['batches']} batches of the last)")
                break
        self.total_seconds = time.perf_counter() - t_run
        if os.environ.get("HFK_SAVE_RANK_WEIGHTS"):
            # a debugging/test hook: every process writes the weights it ended with
            from safetensors.torch import save as st_save

            atomic_write_bytes(self.run_dir / f"rank{self.dist.rank}.safetensors",
                                    st_save(ckpt.model_tensors(self.model)))
        sets = None
        if self.dist.main and cfg.final_eval and self.test_sets:
            sets = self.final_evaluation()
        if self.dist.main and cfg.report:
            from ..evaluation.report import training_report

            t_rep = time.perf_counter()
            page = training_report(self, cfg.report_limit, progress=self.progress, sets=sets)
            if page is not None:
                self.log(f"results page {page} ({time.perf_counter() - t_rep:.1f} s)")
        if self.dist.main:
            self.log(self.summary())
        return self.history

    def summary(self) -> str:
        """The table printed at the end of a run."""
        return epoch_report.summary(self.run_dir, self.history)

    def close(self) -> None:
        self.dist.close()


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True) -> Trainer:
    """Run a training job; returns the :class:`Trainer` (``.model``, ``.history``, ``.run_dir``)."""
    trainer = Trainer(config, resume=resume, overwrite=overwrite, progress=progress)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return trainer


__all__ = ["TrainConfig", "Trainer", "train", "DEFAULT_OUT"]
