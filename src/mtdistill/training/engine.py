"""The Lightning run shared by the VocaLiST and MulT trainers: loggers, checkpoints, progress bar, Trainer, fit."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from mtdistill.core.runs import METRICS
from mtdistill.training.checkpoints import AtomicCheckpointIO, RunCheckpoints
from mtdistill.training.logs import RunCSVLogger

# expected on CPU / small demo runs and noise for users
_QUIET = (
    ".*does not have many workers.*",
    ".*GPU available but not used.*",
    ".*LeafSpec.*",
    ".*is smaller than the logging interval.*",
    ".*tensorboardX.*",
)
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric")
"""Their INFO lines are Trainer banners ("GPU available: ...", "TPU available: ...", "LOCAL_RANK: 0 - ...",
"`Trainer.fit` stopped: ..."): hidden during a run; their warnings and errors still show."""


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's banners and expected warnings (``_QUIET``) off for the duration of a run."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        with warnings.catch_warnings():
            for pattern in _QUIET:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def stderr_progress_bar() -> Any:
    """Lightning's tqdm bar, drawn on stderr so that stdout stays clean for results.

    When stderr is not a terminal (a log file, a pipe) only the training bar is drawn, one line per epoch:
    the validation bar is nested under it and moves the cursor with ESC[A, which a file keeps as garbage.
    """
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    class StderrTQDM(TQDMProgressBar):
        def init_sanity_tqdm(self) -> Any:
            with contextlib.redirect_stdout(sys.stderr):
                return super().init_sanity_tqdm()

        def init_train_tqdm(self) -> Any:
            with contextlib.redirect_stdout(sys.stderr):
                return super().init_train_tqdm()

        def init_validation_tqdm(self) -> Any:
            if not sys.stderr.isatty():
                return Tqdm(disable=True)
            with contextlib.redirect_stdout(sys.stderr):
                return super().init_validation_tqdm()

    return StderrTQDM()


def fit_run(
    module: pl.LightningModule,
    data: pl.LightningDataModule,
    cfg: dict[str, Any],
    run_dir: Path,
    params: int,
    ckpt_path: Path | None = None,
    resume_step: int | None = None,
    **trainer_kwargs: Any,
) -> None:
    """Fit ``module`` on ``data`` into ``run_dir`` with the recipe's ``trainer`` and ``output`` sections.

    Writes metrics.csv (resumed rows kept up to ``resume_step``), TensorBoard logs and the run's checkpoints;
    ``trainer_kwargs`` add or override Trainer arguments (DDP strategy, gradient accumulation, ...).
    """
    from lightning.pytorch.loggers import TensorBoardLogger

    t = cfg["trainer"]
    checkpoints = RunCheckpoints(
        run_dir,
        name=cfg["name"],
        method=cfg["method"],
        params=params,
        epoch_checkpoints=bool(cfg["output"]["epoch_checkpoints"]),
    )
    kwargs: dict[str, Any] = dict(
        max_epochs=int(t["epochs"]),
        accelerator=t["accelerator"],
        devices=t["devices"],
        precision=str(t["precision"]),
        log_every_n_steps=int(t["log_every_n_steps"]),
        logger=[
            RunCSVLogger(run_dir / METRICS, resume_step=resume_step),
            TensorBoardLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False),
        ],
        callbacks=[checkpoints] + ([stderr_progress_bar()] if t["progress_bar"] else []),
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        enable_progress_bar=bool(t["progress_bar"]),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(run_dir),
        deterministic=bool(t["deterministic"]),
    )
    if t.get("stop_at_val_f1") is not None:
        from lightning.pytorch.callbacks import EarlyStopping

        kwargs["callbacks"].append(
            EarlyStopping(
                monitor="val/f1", mode="max", stopping_threshold=float(t["stop_at_val_f1"]), patience=10**9,
                check_on_train_epoch_end=False, verbose=False,
            )
        )  # fmt: skip
    for key in ("limit_train_batches", "limit_val_batches"):
        if t.get(key) is not None:
            kwargs[key] = t[key]
    kwargs.update(trainer_kwargs)
    with quiet_lightning():
        trainer = pl.Trainer(**kwargs)
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path is not None else None)
