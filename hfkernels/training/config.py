"""The settings of a training run (:class:`TrainConfig`), saved in ``RUN/config.json`` and read
back on ``--resume``; :class:`hfkernels.train.Trainer` runs them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..core.loss_reference import RELEASED_WEIGHTS
from ..guidance.models import GUIDE_OF_OLD_FILES, GUIDES, PRESETS

DEFAULT_OUT = "runs/default"
#: learning rate of runs on real data, per guide kind (see TrainConfig.resolve): a residual guide
#: starts at the heuristic and with the paper's 1e-4 barely leaves it (benchmarks/RESULTS.md)
DATA_LR = {"residual": 1e-3, "scratch": 1e-4, "direct": 1e-3}
#: the FusionLoss weights a run may set (keyword -> default: the released weights of hfkernels.core.losses.FusionLoss)
LOSS_WEIGHTS = dict(RELEASED_WEIGHTS)
#: learning rate and epochs of the built-in demo (no data given); see TrainConfig.resolve
DEMO_LR = 1e-3
DEMO_EPOCHS = 4
#: the guide kind of new runs (see hfkernels.models); a saved run config without one is "scratch"
DEFAULT_GUIDE_KIND = "residual"
#: the epoch limit of a run that has a time budget but no --epochs
BUDGET_EPOCHS = 1_000_000


@dataclass
class TrainConfig:
    """Everything a run needs; saved in ``RUN/config.json`` (``"train"``)."""

    data: list = field(default_factory=list)  # data arguments (see hfkernels.data); empty: synthetic
    test: list = field(default_factory=list)  # test sets; empty with synthetic data: a synthetic test set
    epochs: int | None = None  # None: 2 with --data (the paper's recipe), DEMO_EPOCHS without
    preset: str = "tiny"
    guide: str = DEFAULT_GUIDE_KIND  # "residual" (starts as the heuristic) or "scratch" (the paper's network)
    batch_size: int = 8
    crop_size: int | None = 256  # train on random crops of at most this side, batch_size per batch (None: whole images)
    max_size: int | None = None  # downscale training images to this longer side (None: native)
    eval_max_size: int | None = None  # downscale test images too (None: evaluate at native resolution)
    time_budget: float | None = None  # seconds of training after which the run stops (None: no limit)
    device: str | None = None  # default: cuda if available
    accum: int = 1
    seed: int = 0
    out: str = DEFAULT_OUT
    lr: float | None = None  # None: DATA_LR[guide] with data, DEMO_LR without
    loss_weights: dict = field(default_factory=dict)  # FusionLoss weights that differ from LOSS_WEIGHTS
    weight_decay: float = 1e-4
    clip: float = 1.0
    kl_weight: float = 1e-5
    loss_scale: float = 0.1
    levels: int = 4
    backend: str | None = None
    metrics: list | None = None  # metric names for the evaluation (None: the suite's default)
    eval_limit: int | None = None  # at most this many pairs per test set (None: all)
    eval_pairs: int | None = 8  # pairs per test set scored after each epoch, spread over the set (None: all)
    final_eval: bool = True  # score the full test sets once after the last epoch (the page reuses the scores)
    sheet_pairs: int = 4
    synthetic_pairs: int = 48
    synthetic_size: tuple = (96, 128)
    cache: str | bool = "auto"
    num_workers: int = 0
    baseline: bool = True  # evaluate the heuristic guidance once, for comparison
    bn_batches: int = 16  # training batches that re-estimate BatchNorm statistics after each epoch (0: off)
    report: bool = True  # write the results page RUN/report/index.html at the end of the run
    report_limit: int | None = None  # pairs per test set with pictures on that page (None: all)

    def loss_kwargs(self) -> dict:
        """Every FusionLoss weight of this run (the defaults with ``loss_weights`` applied)."""
        return {k: float(self.loss_weights.get(k, v)) for k, v in LOSS_WEIGHTS.items()}

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
        d.setdefault("guide", GUIDE_OF_OLD_FILES)
        # ... and on whole images, bucketed by size (see hfkernels.training.batches.epoch_batches)
        d.setdefault("crop_size", None)
        d["loss_weights"] = dict(d.get("loss_weights") or {})
        if "synthetic_size" in d:
            d["synthetic_size"] = tuple(d["synthetic_size"])
        return cls(**d)

    def resolve(self) -> "TrainConfig":
        """Fill the defaults that depend on whether data is given (in place; returns self).

        With data the learning rate depends on the guide kind (:data:`DATA_LR`): the paper's 1e-4
        for the paper's network (``scratch``), larger for a ``residual`` guide, which starts at the
        heuristic and barely moves from it at 1e-4. The paper's 2 epochs are for a thousand
        full-resolution pairs; the built-in demo trains the tiny network on 48 small generated
        pairs, where it needs larger steps and a few more epochs to show what it learns.
        """
        if self.lr is None:
            self.lr = DATA_LR.get(self.guide, 1e-4) if self.data else DEMO_LR
        if self.epochs is None:
            if self.time_budget is not None:
                self.epochs = BUDGET_EPOCHS  # the budget decides
            else:
                self.epochs = 2 if self.data else DEMO_EPOCHS
        return self

    def validate(self) -> None:
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
        for name in ("max_size", "eval_max_size", "crop_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        v = self.eval_pairs
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"eval_pairs must be a positive int or None, got {v!r}")
        if not isinstance(self.loss_weights, dict):
            raise TypeError(f"loss_weights must be a dict, got {type(self.loss_weights).__name__}")
        for k, v in self.loss_weights.items():
            if k not in LOSS_WEIGHTS:
                raise ValueError(f"loss_weights: unknown weight {k!r}; known: {', '.join(LOSS_WEIGHTS)}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or v == float("inf"):
                raise ValueError(f"loss_weights[{k!r}] must be a finite number >= 0, got {v!r}")
        if self.lr <= 0 or self.clip <= 0:
            raise ValueError(f"lr and clip must be > 0, got lr={self.lr}, clip={self.clip}")


__all__ = ["TrainConfig", "DEFAULT_OUT", "DATA_LR", "LOSS_WEIGHTS", "DEFAULT_GUIDE_KIND", "DEMO_LR", "DEMO_EPOCHS", "BUDGET_EPOCHS"]
