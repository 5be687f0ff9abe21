"""Composer callbacks for HPT runs: epoch hand-off to our loaders, data-stall figure, kNN monitor,
non-finite-loss guard, and a JSONL metrics file (one object per logged step)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from composer.core import Callback, State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from fasthpt.errors import UserError
from fasthpt.fileio import atomic_write_text

log = logging.getLogger(__name__)


class SetEpoch(Callback):
    """Positions our loaders: Composer only calls ``set_epoch`` on a DistributedSampler of a torch
    DataLoader; our FFCV / DALI / torch loaders reshuffle through their own ``set_epoch``, called
    here at each epoch start, and at the start of a fit with the resumed (epoch, batch), so that a
    run resumed mid-epoch loads the rest of that epoch and nothing before it. The trainer runs with
    ``spin_dataloaders=False`` (Composer's spin would load, then skip, every batch already trained,
    and never tell our loaders the epoch); without its spin Composer does not restore the random
    state of a run resumed mid-epoch, so this callback does, from ``trainer`` (set after the
    Trainer is built), just before the first batch as Composer's spin would."""

    def __init__(self, loader):
        self.loader = loader
        self.trainer = None

    def fit_start(self, state: State, logger: Logger) -> None:
        start = int(state.timestamp.batch_in_epoch)
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(int(state.timestamp.epoch), start_batch=start)
        rng = getattr(self.trainer, "_rng_state", None)  # Composer 0.32.1's checkpointed RNG states
        if start > 0 and rng is not None:
            from composer.utils import reproducibility

            reproducibility.load_rng_state(rng)
            self.trainer._rng_state = None

    def epoch_start(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch_in_epoch) == 0 and hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(int(state.timestamp.epoch))


class DataStall(Callback):
    """Fraction of wall time spent waiting for the next batch: (BEFORE -> AFTER_DATALOADER) over
    (BEFORE_DATALOADER -> next BEFORE_DATALOADER, or the epoch's end), summed over a window of batches. Host-side
    figure: on a GPU the step's kernels may still run while the host waits, so it is an upper bound."""

    def __init__(self, window: int = 50, clock: Callable[[], float] = time.perf_counter):
        self.window, self.clock = window, clock
        self.wait = self.total = 0.0
        self.all_wait = self.all_total = 0.0
        self._t0: float | None = None
        self._waited = 0.0  # the current batch's wait, counted once its step closes (a ratio of like spans)
        self._n = 0

    def _close_step(self, now: float, logger: Logger) -> None:
        """The step begun at the last BEFORE_DATALOADER ends ``now``: count its span and its wait."""
        if self._t0 is None:
            return
        step = now - self._t0
        self.total += step
        self.all_total += step
        self.wait += self._waited
        self.all_wait += self._waited
        self._n += 1
        if self._n % self.window == 0:
            logger.log_metrics({"data/stall_frac": self.wait / self.total if self.total else 0.0,
                                "data/wait_s_per_batch": self.wait / self.window})
            self.wait = self.total = 0.0
        self._t0, self._waited = None, 0.0

    def before_dataloader(self, state: State, logger: Logger) -> None:
        now = self.clock()
        self._close_step(now, logger)
        self._t0 = now

    def after_dataloader(self, state: State, logger: Logger) -> None:
        if self._t0 is not None:
            self._waited = self.clock() - self._t0

    def epoch_end(self, state: State, logger: Logger) -> None:
        # The epoch's last step closes here (its span and its wait: every batch's wait counts, the
        # first batch of each epoch, where a loader's epoch start would show, included). The gap
        # to the next epoch's first BEFORE_DATALOADER (epoch-end callbacks, evaluation) is neither.
        self._close_step(self.clock(), logger)

    def fit_end(self, state: State, logger: Logger) -> None:
        self._close_step(self.clock(), logger)  # a run that ends mid-epoch

    @property
    def stall_frac(self) -> float:
        """Over the whole run so far (this process)."""
        return self.all_wait / self.all_total if self.all_total else float("nan")


@dataclass
class PlateauRule:
    """Convergence in a run: the best value so far has not improved by more than ``delta`` for
    ``patience`` evaluations in a row. Pure bookkeeping, fed one (step, value) at a time."""

    patience: int
    delta: float
    best: float = -math.inf
    best_step: int | None = None
    waited: int = 0

    def update(self, step: int, value: float) -> bool:
        """Record one evaluation; True when the run has reached its plateau."""
        if self.best_step is None or value > self.best + self.delta:
            self.best, self.best_step, self.waited = value, step, 0
        else:
            self.waited += 1
        return self.waited >= self.patience


class KNNMonitor(Callback):
    """Weighted cosine kNN accuracy of ``moco.backbone`` (the query backbone) on the labelled val split, every
    ``interval`` batches and at the end (measured on rank 0). ``make_loaders`` returns
    (train_eval_loader, val_loader); built on first use.

    With a ``plateau`` rule the run stops at the evaluation where the rule fires: rank 0 decides and
    broadcasts, so every rank stops after the same batch. History and rule state are part of the
    checkpoint (Composer saves callbacks' ``state_dict``), so a resumed run goes on where it was."""

    def __init__(self, moco: torch.nn.Module, make_loaders: Callable, num_classes: int,
                 interval: int, k: int = 20, t: float = 0.07, plateau: PlateauRule | None = None):
        self.moco, self.make_loaders, self.num_classes = moco, make_loaders, num_classes
        self.interval, self.k, self.t, self.plateau = interval, k, t, plateau
        self._loaders = None
        self.history: list[tuple[int, float]] = []
        self.stopped_at: int | None = None  # the batch the plateau rule stopped the run after

    def batch_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        if self.interval > 0 and batch % self.interval == 0:
            acc = self._measure(batch, logger)
            if self.plateau is not None and self._plateau_reached(batch, acc):
                self.stopped_at = batch
                log.info("kNN plateau at batch %d: best %.4f at batch %d, no gain above %.4f in %d evaluations; "
                         "stopping", batch, self.plateau.best, self.plateau.best_step, self.plateau.delta,
                         self.plateau.patience)
                state.stop_training()

    def fit_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        if not self.history or self.history[-1][0] != batch:
            self._measure(batch, logger)

    def _plateau_reached(self, batch: int, acc: float | None) -> bool:
        """Rank 0's verdict, the same on every rank."""
        verdict = [self.plateau.update(batch, acc) if dist.get_global_rank() == 0 else None]
        dist.broadcast_object_list(verdict, src=0)
        return bool(verdict[0])

    def _measure(self, batch: int, logger: Logger) -> float | None:
        if dist.get_global_rank() != 0:
            return None
        from fasthpt.eval.features import extract_features
        from fasthpt.eval.knn import knn_accuracy

        if self._loaders is None:
            self._loaders = self.make_loaders()
        start = time.perf_counter()
        train_f, train_y = extract_features(self.moco.backbone, self._loaders[0])
        val_f, val_y = extract_features(self.moco.backbone, self._loaders[1])
        self.moco.train(self.moco.training)  # re-applies frozen stages' eval-mode BN (hpt.freeze_stages)
        acc = knn_accuracy(train_f, train_y, val_f, val_y, self.num_classes, k=self.k, t=self.t)
        self.history.append((batch, acc))
        logger.log_metrics({"knn/acc": acc, "knn/seconds": time.perf_counter() - start})
        log.info("kNN monitor at batch %d: top-1 %.4f", batch, acc)
        return acc

    def plateau_result(self) -> dict | None:
        """What the plateau rule concluded (None without a rule): whether it stopped the run, where,
        and the best value and its batch."""
        if self.plateau is None:
            return None
        return {"stopped": self.stopped_at is not None, "iteration": self.stopped_at,
                "best_iteration": self.plateau.best_step,
                "best_value": None if self.plateau.best_step is None else self.plateau.best,
                "patience": self.plateau.patience, "delta": self.plateau.delta, "history": list(self.history)}

    def state_dict(self) -> dict:
        rule = None if self.plateau is None else dataclasses.asdict(self.plateau)
        return {"history": list(self.history), "stopped_at": self.stopped_at, "plateau": rule}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(h) for h in state.get("history", [])]
        self.stopped_at = state.get("stopped_at")
        if self.plateau is not None and state.get("plateau"):
            saved = state["plateau"]
            self.plateau.best, self.plateau.best_step, self.plateau.waited = (
                saved["best"], saved["best_step"], saved["waited"])


class NonFiniteLoss(UserError):
    pass


class NonFiniteGuard(Callback):
    """Stop on a NaN / inf loss (any process) before the step is applied, saving a checkpoint of
    the state that produced it into ``folder`` for inspection."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def after_loss(self, state: State, logger: Logger) -> None:
        loss = state.loss
        values = list(loss.values()) if isinstance(loss, dict) else [loss]
        finite = all(bool(torch.isfinite(v.detach()).all()) for v in values)
        bad = torch.tensor([0.0 if finite else 1.0], device=values[0].device)  # NCCL needs CUDA tensors
        dist.all_reduce(bad, reduce_operation="MAX")
        if bad.item() == 0:
            return
        from composer.utils.checkpoint import save_checkpoint

        batch = int(state.timestamp.batch)
        self.folder.mkdir(parents=True, exist_ok=True)
        path = save_checkpoint(state, str(self.folder / f"nonfinite-ba{batch}-rank{{rank}}.pt"))
        raise NonFiniteLoss(f"loss became {float(values[0].detach().float()):.4g} at batch {batch}; "
                            f"state saved for inspection in {path or self.folder} (lower optim.lr?)")


class JSONLLogger(LoggerDestination):
    """metrics.jsonl: one JSON object per logged step (rank 0): {"step": N, metric: value, ...},
    written for every ``interval``-th batch (0: none), any step with a kNN figure, and the last step.

    Step N's row holds batch N's training metrics (0-based) and what was measured after N batches
    (kNN). A resumed run redoes the batches after its checkpoint, so at fit start the rows past the
    resumed batch M are dropped (the file rewritten atomically) and row M is carried into memory to
    merge with the redone batch's metrics: no step appears twice."""

    def __init__(self, path: str | Path, interval: int = 10):
        self.path, self.interval = Path(path), max(0, interval)
        self._step: int | None = None
        self._row: dict = {}
        self._fh = None

    def fit_start(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0 or not self.path.is_file() or self._fh is not None:
            return
        resumed = int(state.timestamp.batch)
        kept, carried, dropped = [], {}, 0
        for line in self.path.read_text().splitlines():
            try:
                row = json.loads(line)
                step = int(row["step"])
            except (ValueError, KeyError, TypeError):
                dropped += 1  # a line cut short by a kill: nothing to keep
                continue
            if step < resumed:
                kept.append(line)
            elif step == resumed:
                carried.update({k: v for k, v in row.items() if k != "step"})
            else:
                dropped += 1
        if not carried and not dropped:
            return
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        if carried and self._step in (None, resumed):
            self._step, self._row = resumed, {**carried, **self._row}
        if dropped:
            log.info("%s: dropped %d row(s) past batch %d, which this launch redoes", self.path, dropped, resumed)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if dist.get_global_rank() != 0:
            return
        if step is not None and step != self._step:
            self._flush(force=False)
            self._step = step
        for key, value in metrics.items():
            if torch.is_tensor(value):
                value = value.item() if value.numel() == 1 else value.tolist()
            if isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            self._row[key] = value

    def _flush(self, force: bool) -> None:
        if self._step is None or not self._row:
            return
        on_interval = self.interval > 0 and self._step % self.interval == 0
        if force or on_interval or any(k.startswith("knn/") for k in self._row):
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a")
            self._fh.write(json.dumps({"step": self._step, **self._row}, default=str) + "\n")
            self._fh.flush()
        self._row = {}

    def fit_end(self, state: State, logger: Logger) -> None:
        self._flush(force=True)

    def close(self, state: State, logger: Logger) -> None:
        self._flush(force=True)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
