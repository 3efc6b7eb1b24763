"""File names inside a training run folder (docs/training.md, "Run folder"), shared by trainers and evaluators.

RUN/config.yaml                the resolved recipe
RUN/checkpoints/epoch=NNN.ckpt full Lightning state after 0-based epoch NNN
RUN/checkpoints/last.ckpt      copy of the newest one (what resume reads)
RUN/checkpoints/best.ckpt      copy of the best one (see ``Quirks.best_strictly_greater``)
RUN/model_last.safetensors / model_best.safetensors
RUN/summary.json, RUN/metrics.csv
"""

from __future__ import annotations

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
BEST = "best.ckpt"
MODEL_LAST = "model_last.safetensors"
MODEL_BEST = "model_best.safetensors"
SUMMARY = "summary.json"
CONFIG = "config.yaml"
METRICS = "metrics.csv"
