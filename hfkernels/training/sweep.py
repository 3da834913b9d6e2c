"""Search over training settings with Optuna: each trial is one run of the trainer, scored on a
validation split of the training data.

- **Space.** A mapping ``axis -> spec`` (from a YAML or JSON file, or :data:`PAPER_GRID`). An axis
  is any :class:`~hfkernels.training.config.TrainConfig` field (``lr``, ``max_size``, ``preset``,
  ``guide``, ``epochs``, ``time_budget``, ``batch_size``, ...), a FusionLoss weight (``max_w``,
  ``consist_w``, ``grad_w``, ``ssim_w``, ``ssim_ir_w``, ``ir_compose``, ``color_w``), or ``ssim``
  (both SSIM weights together, as in the paper's search). A spec is a value (fixed), a list
  (categorical) or ``{low, high[, log][, step]}`` (a float range; an int range when ``low`` and
  ``high`` are ints).
- **Validation.** With data, :func:`hfkernels.training.split.validation_split` holds out a seeded,
  recorded part of the training sets (``OUT/split/``); with generated scenes the trainer's
  separately seeded synthetic test set validates. Trials see no test set. The score is the
  paper's ``(VIF + 1.5 Qabf + SSIM) / 3`` of the validation means (pooled over the held-out sets,
  weighted by their pairs), reported after every epoch to the pruner.
- **Storage.** Default ``sqlite:///OUT/study.db``: a killed search continues where it stopped
  (trials left running by a dead process are failed by the heartbeat and retried). Any Optuna
  storage URL (PostgreSQL, MySQL, SQLite) or ``journal:PATH`` (a journal file on a shared disk)
  lets many processes work on one study.
- **Outputs** (rewritten after every trial by the process that ran it): ``OUT/trials.csv`` and
  ``OUT/trials.json`` (parameters, score, seconds, state), ``OUT/best.json`` (the best
  configuration and the command that trains it), ``OUT/heatmap.png`` (two axes; the other axes at
  the best trial's values where trials there exist).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from pathlib import Path

from ..io import atomic_write_bytes, atomic_write_json
from .config import LOSS_WEIGHTS, TrainConfig

#: the loss-weight grid of the paper's released search (240 points; "ssim" sets both SSIM weights)
PAPER_GRID = {"max_w": [4, 10, 16, 40], "grad_w": [2, 32, 40, 64, 90], "ssim": [1, 10, 32],
              "consist_w": [2, 12, 24, 40]}
#: metrics the validation scores with
VAL_METRICS = ("VIF", "Qabf", "SSIM")
#: train settings a search may not vary (they define the run, not what it learns)
_NOT_AXES = {"data", "test", "out", "device", "metrics", "report", "report_limit", "baseline",
             "sheet_pairs", "loss_weights", "num_workers", "cache"}


def search_score(m: dict) -> float:
    """``(VIF + 1.5 Qabf + SSIM) / 3`` of a metric-means dict (the paper's selection score)."""
    return (m["VIF"] + 1.5 * m["Qabf"] + m["SSIM"]) / 3


def pooled(per_set: dict, sizes: dict | None) -> dict:
    """Metric means over every validation pair: the per-set means ``{set: {metric: mean}}``
    weighted by the sets' pair counts ``sizes`` (one set, or no sizes: that set's means)."""
    if not sizes or len(per_set) == 1:
        return next(iter(per_set.values()))
    n = sum(sizes[s] for s in per_set)
    return {k: sum(per_set[s][k] * sizes[s] for s in per_set) / n for k in VAL_METRICS}


def axis_names() -> list[str]:
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_AXES]
    return fields + list(LOSS_WEIGHTS) + ["ssim"]


def load_space(path) -> dict:
    """The search space in a YAML (``.yaml``/``.yml``) or JSON file, checked by :func:`check_space`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        space = yaml.safe_load(text)
    else:
        space = json.loads(text)
    return check_space(space, str(path))


def check_space(space, where: str = "space") -> dict:
    """``space`` if every axis and spec is valid, else ValueError naming the axis."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"{where}: a search space is a non-empty mapping of axis -> values")
    known = axis_names()
    for name, spec in space.items():
        if name not in known:
            raise ValueError(f"{where}: unknown axis {name!r}; axes: {', '.join(known)}")
        if isinstance(spec, list) and not spec:
            raise ValueError(f"{where}: axis {name!r} has an empty list of values")
        if isinstance(spec, dict):
            extra = set(spec) - {"low", "high", "log", "step"}
            if extra or "low" not in spec or "high" not in spec:
                raise ValueError(f"{where}: axis {name!r}: a range is {{low, high[, log][, step]}}, got {spec}")
            if not spec["low"] <= spec["high"]:
                raise ValueError(f"{where}: axis {name!r}: low > high")
    return space


def is_grid(space: dict) -> bool:
    return all(not isinstance(v, dict) for v in space.values())


def grid_points(space: dict) -> dict:
    """The space as Optuna's GridSampler wants it (every axis a list; fixed values a 1-list)."""
    return {k: (list(v) if isinstance(v, list) else [v]) for k, v in space.items()}


def suggest(trial, space: dict) -> dict:
    """The trial's values of every axis."""
    out = {}
    for name, spec in space.items():
        if isinstance(spec, list):
            out[name] = trial.suggest_categorical(name, spec)
        elif isinstance(spec, dict):
            lo, hi = spec["low"], spec["high"]
            if isinstance(lo, int) and isinstance(hi, int) and not spec.get("log"):
                out[name] = trial.suggest_int(name, lo, hi, step=int(spec.get("step", 1)))
            else:
                out[name] = trial.suggest_float(name, float(lo), float(hi), log=bool(spec.get("log")),
                                                step=spec.get("step"))
        else:
            out[name] = spec
    return out


def apply(base: TrainConfig, params: dict) -> TrainConfig:
    """A copy of ``base`` with the trial's ``params`` set (loss weights into ``loss_weights``)."""
    cfg = dataclasses.replace(base, loss_weights=dict(base.loss_weights))
    for name, v in params.items():
        if name == "ssim":
            cfg.loss_weights.update(ssim_w=float(v), ssim_ir_w=float(v))
        elif name in LOSS_WEIGHTS:
            cfg.loss_weights[name] = float(v)
        else:
            setattr(cfg, name, v)
    return cfg


def open_storage(url: str | None, folder: Path, heartbeat: float):
    """An Optuna storage: ``url`` (RDB URL or ``journal:PATH``), default SQLite in ``folder``.
    RDB storages get a heartbeat, so trials of a killed process are failed and retried."""
    import optuna

    if url is None:
        url = f"sqlite:///{(folder / 'study.db').resolve()}"
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url[len("journal:"):])), url
    import inspect
    import warnings

    kw = {}
    if heartbeat > 0:
        # the callback and its keyword were renamed in Optuna 4.9
        new = "heartbeat_stale_trial_callback" in inspect.signature(optuna.storages.RDBStorage).parameters
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback" if new else "RetryFailedTrialCallback")
        kw = {"heartbeat_interval": max(1, int(heartbeat)), "grace_period": max(2, int(2 * heartbeat))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kw:
            kw["heartbeat_stale_trial_callback" if new else "failed_trial_callback"] = retry(max_retry=3)
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                          if url.startswith("sqlite") else {}, **kw), url


class Sweep:
    """One worker of a search: ``Sweep(base, space, out, ...).run(n_trials)``.

    Args:
        base: the settings every trial starts from (``data`` empty: generated scenes).
        space: axis -> spec (see the module docstring).
        out: this worker's folder (trial runs, outputs, and the default storage).
        storage, study: an Optuna storage URL and study name (default: SQLite in ``out``, "sweep").
        sampler: "grid" (every point of a space of lists), "tpe" or "random".
        pruner: "median" (stop a trial whose epoch score is below the median of earlier trials at
            that epoch) or "none".
        heatmap: the two axes of the heat map (default: the first two varying axes).
        val_fraction, val_seed: the validation split (see :mod:`hfkernels.training.split`).
    """

    def __init__(self, base: TrainConfig, space: dict, out, storage: str | None = None, study: str = "sweep",
                 sampler: str = "tpe", pruner: str = "median", seed: int = 0, heatmap=None,
                 val_fraction: float = 0.1, val_seed: int = 0, heartbeat: float = 30.0, log=print,
                 progress: bool = False):
        import optuna

        self.space = check_space(space)
        if sampler == "grid" and not is_grid(self.space):
            raise ValueError("sampler 'grid' needs every axis to be a list of values (or a fixed value)")
        if sampler not in ("grid", "tpe", "random"):
            raise ValueError(f"sampler must be grid, tpe or random, got {sampler!r}")
        if pruner not in ("median", "none"):
            raise ValueError(f"pruner must be median or none, got {pruner!r}")
        if base.test:
            raise ValueError("a search validates on a split of its training data; give no test sets")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.base, self.log, self.progress = base, log, progress
        varying = [k for k, v in self.space.items() if isinstance(v, dict) or (isinstance(v, list) and len(v) > 1)]
        self.heat_axes = list(heatmap) if heatmap else varying[:2]
        for a in self.heat_axes:
            if a not in self.space:
                raise ValueError(f"heat map axis {a!r} is not an axis of the space ({', '.join(self.space)})")
        if base.data:
            from .split import validation_split

            self.split = validation_split(base.data, self.out / "split", val_fraction, val_seed)
            self.val_sizes = {n: len(f["val"]) for n, f in self.split["sets"].items() if f["val"]}
        else:
            self.split, self.val_sizes = None, None
        self.storage, self.storage_url = open_storage(storage, self.out, heartbeat)
        samplers = {"grid": lambda: optuna.samplers.GridSampler(grid_points(self.space), seed=seed),
                    "tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                    "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
        self.study = optuna.create_study(
            storage=self.storage, study_name=study, direction="maximize", load_if_exists=True,
            sampler=samplers[sampler](),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0) if pruner == "median"
            else optuna.pruners.NopPruner())
        record = {"space": self.space, "sampler": sampler, "pruner": pruner,
                  "base": {k: v for k, v in base.to_json().items() if k not in ("out", "data")},
                  "validation": self.split["settings"] if self.split else "synthetic (trainer's seeded test set)"}
        saved = self.study.user_attrs.get("search")
        if saved is None:
            self.study.set_user_attr("search", record)
        elif any(saved.get(k) != json.loads(json.dumps(record[k])) for k in ("space", "base", "validation")):
            raise ValueError(f"study {study!r} in {self.storage_url} was started with other settings: {saved}")

    # ------------------------------------------------------------------ one trial
    def objective(self, trial) -> float:
        import optuna

        from .loop import Trainer

        params = suggest(trial, self.space)
        cfg = apply(self.base, params)
        cfg.out = str(self.out / "trials" / f"{trial.number:04d}")
        cfg.metrics, cfg.report, cfg.baseline, cfg.sheet_pairs = list(VAL_METRICS), False, False, 0
        # every epoch's score is over the whole validation split; nothing is scored after the last
        cfg.eval_pairs, cfg.final_eval = None, False
        if self.split:
            cfg.data, cfg.test = list(self.split["train"]), list(self.split["val"])
        cfg.validate()
        trial.set_user_attr("config", {k: v for k, v in cfg.to_json().items() if k not in ("data", "test")})
        scores: list[float] = []

        def on_epoch(epoch: int, rec: dict) -> None:
            value = search_score(pooled(rec["eval"], self.val_sizes))
            scores.append(value)
            trial.set_user_attr("epoch_scores", scores)
            trial.set_user_attr("train_seconds", sum(r["seconds"] for r in tr.history))
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: score {value:.4f}")

        t0 = time.perf_counter()
        tr = Trainer(cfg, overwrite=True, progress=self.progress, log=lambda *a, **k: None, on_epoch=on_epoch)
        try:
            tr.fit()
        finally:
            tr.close()
            trial.set_user_attr("wall_seconds", time.perf_counter() - t0)
        if not scores:
            raise RuntimeError(f"trial {trial.number} trained no epoch")
        trial.set_user_attr("val", tr.history[-1]["eval"])
        return scores[-1]

    # ------------------------------------------------------------------ the loop
    def counts(self) -> dict:
        from optuna.trial import TrialState

        c = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.RUNNING, TrialState.PRUNED,
                                          TrialState.FAIL)}
        for t in self.study.get_trials(deepcopy=False):
            if t.state.name.lower() in c:
                c[t.state.name.lower()] += 1
        return c

    def run(self, n_trials: int | None = None) -> dict:
        """Work on the study until it holds ``n_trials`` finished (complete or pruned) trials, or
        the grid is exhausted (None: until the grid is exhausted; a sampler needs a number).
        Returns :meth:`counts`."""
        import optuna
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        if n_trials is None and not isinstance(self.study.sampler, optuna.samplers.GridSampler):
            raise ValueError("a sampler search needs a number of trials")
        callbacks = [self._after_trial]
        if n_trials is not None:
            if self.finished() >= n_trials:
                self.log(f"the study already holds {self.finished()} finished trial(s); nothing to do")
                self.write_outputs()
                return self.counts()
            callbacks.insert(0, MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study.optimize(self.objective, callbacks=callbacks, catch=())
        self.write_outputs()
        return self.counts()

    def finished(self) -> int:
        c = self.counts()
        return c["complete"] + c["pruned"]

    def _after_trial(self, study, trial) -> None:
        c = self.counts()
        best = self.best()
        value = "pruned" if trial.state.name == "PRUNED" else (
            f"{trial.value:.4f}" if trial.value is not None else trial.state.name.lower())
        self.log(f"trial {trial.number}: {value} {trial.params} | done {c['complete']}, running {c['running']}, "
                 f"pruned {c['pruned']}, failed {c['fail']}"
                 + (f" | best {best['score']:.4f} (trial {best['trial']})" if best else ""))
        self.write_outputs()

    # ------------------------------------------------------------------ outputs
    def best(self) -> dict | None:
        done = [t for t in self.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
        if not done:
            return None
        t = max(done, key=lambda t: t.value)
        cfg = t.user_attrs.get("config", {})
        return {"trial": t.number, "score": t.value, "params": t.params, "val": t.user_attrs.get("val"),
                "config": cfg, "command": train_command(cfg, self.base.data)}

    def rows(self) -> list[dict]:
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            rows.append({"trial": t.number, "state": t.state.name.lower(), "score": t.value,
                         **{f"param_{k}": v for k, v in t.params.items()},
                         "epochs_scored": len(t.user_attrs.get("epoch_scores", [])),
                         "epoch_scores": t.user_attrs.get("epoch_scores", []),
                         "train_seconds": t.user_attrs.get("train_seconds"),
                         "wall_seconds": t.user_attrs.get("wall_seconds"),
                         "started": t.datetime_start.isoformat() if t.datetime_start else None,
                         "finished": t.datetime_complete.isoformat() if t.datetime_complete else None})
        return rows

    def write_outputs(self) -> None:
        import csv
        import io

        rows = self.rows()
        atomic_write_json(self.out / "trials.json", {"study": self.study.study_name, "storage": self.storage_url,
                                                     "search": self.study.user_attrs.get("search"),
                                                     "counts": self.counts(), "trials": rows})
        keys = sorted({k for r in rows for k in r}, key=lambda k: (not k.startswith("trial"), k != "state",
                                                                   k != "score", not k.startswith("param_"), k))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
        atomic_write_bytes(self.out / "trials.csv", buf.getvalue().encode())
        best = self.best()
        if best:
            atomic_write_json(self.out / "best.json", best)
        if len(self.heat_axes) == 2 and best:
            heatmap(rows, self.heat_axes, best["params"], self.out / "heatmap.png", self.space)


def train_command(cfg: dict, data) -> str:
    """The ``hfkernels train`` command line of a trial's configuration (on the whole training data)."""
    args = ["hfkernels", "train"]
    for d in data or []:
        args += ["--data", str(d)]
    for key in ("preset", "guide", "epochs", "batch_size", "max_size", "lr", "time_budget", "seed"):
        v = cfg.get(key)
        if v is not None:
            args += [f"--{key.replace('_', '-')}", f"{v:g}" if isinstance(v, float) else str(v)]
    for k, v in (cfg.get("loss_weights") or {}).items():
        args += [f"--{k.replace('_', '-')}", f"{v:g}"]
    return " ".join(shlex.quote(a) for a in args)


def _axis_values(vals: list, categorical: bool) -> tuple[list, callable]:
    """The columns of an axis and a function giving a value's column: its distinct values for a
    categorical axis, else (a sampled range) 5 bins, log-spaced when every value is positive,
    labelled by their centres."""
    distinct = sorted(set(vals))
    if categorical or len(distinct) <= 2:
        return distinct, lambda v: distinct.index(v)
    n = 5
    lo, hi = distinct[0], distinct[-1]
    log = lo > 0
    a, b = (math.log(lo), math.log(hi)) if log else (lo, hi)
    edges = [a + (b - a) * i / n for i in range(n + 1)]
    centres = [(math.exp((edges[i] + edges[i + 1]) / 2) if log else (edges[i] + edges[i + 1]) / 2) for i in range(n)]

    def col(v):
        x = math.log(v) if log else v
        return min(n - 1, max(0, int((x - a) / (b - a + 1e-300) * n)))
    return centres, col


def heatmap(rows: list[dict], axes, best_params: dict, path: Path, space: dict | None = None) -> Path | None:
    """Fig.-5-style heat map (PNG) of the best score per cell of two axes. The trials whose
    other axes hold the best trial's values are used when they fill every cell that some trial
    fills (a grid); else the best over every trial (a sampler's scattered points; the title says
    which). ``space`` tells categorical axes (lists) from sampled ranges (binned)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x, y = axes
    done = [r for r in rows if r["state"] == "complete" and f"param_{x}" in r and f"param_{y}" in r]
    if not done:
        return None
    others = [k[6:] for k in done[0] if k.startswith("param_") and k[6:] not in axes]
    at_best = [r for r in done if all(r.get(f"param_{k}") == best_params.get(k) for k in others)]
    cells = {(r[f"param_{x}"], r[f"param_{y}"]) for r in done}
    use = at_best if {(r[f"param_{x}"], r[f"param_{y}"]) for r in at_best} == cells else done
    space = space or {}
    xs, xcol = _axis_values([r[f"param_{x}"] for r in use], isinstance(space.get(x), list))
    ys, ycol = _axis_values([r[f"param_{y}"] for r in use], isinstance(space.get(y), list))
    grid = np.full((len(ys), len(xs)), np.nan)
    for r in use:
        i, j = ycol(r[f"param_{y}"]), xcol(r[f"param_{x}"])
        grid[i, j] = r["score"] if np.isnan(grid[i, j]) else max(grid[i, j], r["score"])
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.9 * len(xs)), max(3.2, 1.4 + 0.7 * len(ys))))
    im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    ax.set_xticks(range(len(xs)), [fmt(v) for v in xs])
    ax.set_yticks(range(len(ys)), [fmt(v) for v in ys])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    for i in range(len(ys)):
        for j in range(len(xs)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=7, color="w")
    fixed = ", ".join(f"{k}={fmt(best_params.get(k))}" for k in others)
    title = ("others at the best trial's: " + fixed) if use is at_best and others else \
        f"best of {len(use)} trials over the other axes"
    import textwrap

    ax.set_title("(VIF + 1.5 Qabf + SSIM) / 3\n" + "\n".join(textwrap.wrap(title, 60)), fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


__all__ = ["Sweep", "PAPER_GRID", "VAL_METRICS", "search_score", "pooled", "load_space", "check_space", "axis_names",
           "apply", "suggest", "heatmap", "train_command", "open_storage"]
