"""metrics.csv of a run: one row per logged step or epoch, every loss term and the lr.

Lightning's CSVLogger writes into version folders and starts a new file on resume; the run folder needs one
``metrics.csv`` that survives a kill and continues after resume without the rows of the lost, re-run steps.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from mtdistill.core.safeio import atomic_write_text

FIRST_COLUMNS = ("epoch", "step", "lr")


class RunCSVLogger(Logger):
    """Appends rows to ``path``; rewrites the file (atomically) only when a new column appears."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(FIRST_COLUMNS)
        self._written = 0  # rows already on disk with the current header
        if resume_step is not None and self.path.is_file():
            # keep what was logged up to the resumed checkpoint; later rows belong to steps that will be re-run
            with open(self.path, newline="") as fh:
                for row in csv.DictReader(fh):
                    step = float(row.get("step") or 0)
                    if step < resume_step:  # a row logged at step s belongs to the (s+1)-th optimizer step
                        self.rows.append({k: v for k, v in row.items() if v not in ("", None)})
            for row in self.rows:
                self._add_columns(row)
            self._rewrite()

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return str(self.path.parent)

    def _add_columns(self, row: dict[str, Any]) -> bool:
        new = [k for k in row if k not in self.columns]
        self.columns.extend(sorted(new))
        return bool(new)

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass  # the resolved config is written as config.yaml by the run

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {}
        for key, value in metrics.items():
            value = float(value.item() if hasattr(value, "item") else value)
            row[key] = value
        row["step"] = int(step) if step is not None else len(self.rows)
        if "epoch" in row:
            row["epoch"] = int(row["epoch"])
        self.rows.append(row)
        if self._add_columns(row):
            self._written = 0  # new column: the header changes, rewrite on save

    @rank_zero_only
    def save(self) -> None:
        if self._written == 0:
            self._rewrite()
            return
        if self._written < len(self.rows):
            with open(self.path, "a", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.columns)
                writer.writerows(self._format(r) for r in self.rows[self._written :])
            self._written = len(self.rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def _format(self, row: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in row.items():
            if isinstance(v, float) and math.isfinite(v) and v == int(v) and k in ("epoch", "step"):
                v = int(v)
            out[k] = v
        return out

    def _rewrite(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(self._format(r) for r in self.rows)
        atomic_write_text(self.path, buf.getvalue())
        self._written = len(self.rows)
