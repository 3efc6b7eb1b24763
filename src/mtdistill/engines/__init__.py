"""Where `score` and `prepare` run their per-file work: ``local`` (this machine's processes) or ``ray`` (a cluster).

Both engines run the same per-file functions (`mtdistill.inference.score._score_one`,
`mtdistill.data.prepare.process_shard`); the driver (the process that runs the command) is the only writer of the
CSV and of the store index, so results, resume rules and outputs are the same whichever engine ran them.
Ray is an optional extra (``pip install "mtdistill[ray]"``) and is imported only by `mtdistill.engines.ray_engine`.
See docs/scale.md.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mtdistill.core.errors import UserError

ENGINES = ("local", "ray")
RAY_EXTRA = 'pip install "mtdistill[ray]"'


@dataclass(frozen=True)
class Engine:
    """Engine choice and its settings (``address`` None: $RAY_ADDRESS, else a local Ray instance)."""

    name: str = "local"
    address: str | None = None
    num_cpus: float = 1.0  # per task (one file for score, one shard for prepare)
    num_gpus: float = 0.0  # per task; fractions share a GPU (0.25: four tasks per GPU)
    max_retries: int = 3  # Ray re-runs a task this often when its worker or node is lost
    connect_timeout_s: float = 30.0

    @property
    def is_ray(self) -> bool:
        return self.name == "ray"


LOCAL = Engine()


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """--engine, --ray-address, --ray-num-cpus, --ray-num-gpus (shared by score and prepare)."""
    g = parser.add_argument_group("engine (docs/scale.md)")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local (default): worker processes on this machine (--workers); ray: tasks on a Ray cluster "
        f"(needs {RAY_EXTRA})",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="Ray cluster to use, e.g. 10.0.0.1:6379 or ray://head:10001 (default: $RAY_ADDRESS, else a Ray "
        "instance started on this machine)",
    )
    g.add_argument(
        "--ray-num-cpus", type=float, default=1.0, metavar="N", help="CPUs reserved per Ray task (default 1)"
    )
    g.add_argument(
        "--ray-num-gpus",
        type=float,
        default=0.0,
        metavar="N",
        help="GPUs reserved per Ray task, fractions allowed (0.25: four tasks share a GPU; default 0)",
    )


def engine_from_args(args: argparse.Namespace) -> Engine:
    """The Engine the command-line options ask for (one clear line for options that do not fit together)."""
    name = getattr(args, "engine", "local") or "local"
    address = getattr(args, "ray_address", None)
    num_cpus = float(getattr(args, "ray_num_cpus", 1.0))
    num_gpus = float(getattr(args, "ray_num_gpus", 0.0))
    if name != "ray":
        given = [
            f
            for f, v, d in (
                ("--ray-address", address, None),
                ("--ray-num-cpus", num_cpus, 1.0),
                ("--ray-num-gpus", num_gpus, 0.0),
            )
            if v != d
        ]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --engine ray")
        return LOCAL
    if num_cpus <= 0 or num_gpus < 0:
        raise UserError(f"--ray-num-cpus must be > 0 and --ray-num-gpus >= 0 (got {num_cpus:g}, {num_gpus:g})")
    if num_gpus > 1 and num_gpus != int(num_gpus):
        raise UserError(f"--ray-num-gpus above 1 must be a whole number (got {num_gpus:g})")
    return Engine("ray", address=address or None, num_cpus=num_cpus, num_gpus=num_gpus)
