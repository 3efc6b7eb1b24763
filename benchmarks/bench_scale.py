"""Files/hour of `score` and `prepare` per engine: local processes vs Ray, and one Ray node vs two.

Run by hand (about 10-20 minutes on 2 cores; needs the Ray extra: pip install "mtdistill[ray]"):

    python benchmarks/bench_scale.py --clips 16 --duration 3 --out /tmp/bench_scale.json

Corpus: ``--clips`` synthetic talking clips (`make_talking_video`, 160x160, 25 fps) in a temporary folder.
Model: the committed tiny model (tests/data/trained_tiny.safetensors), score at ``--stride`` 5.

Configurations (each pass writes a fresh CSV / store):
- ``local wN``: today's engine, N worker processes (N=1 runs in this process);
- ``ray local``: `--engine ray` on a Ray instance started on this machine with all its CPUs;
- ``ray 1 node`` / ``ray 2 nodes``: a ray.cluster_utils.Cluster with one / two nodes of ``--cpus-per-node`` CPUs.
Ray configurations run the batch twice: "cold" is the first pass (Ray starts its worker processes: import torch,
load the model); "warm" is the second (the same job's workers are reused with the model already loaded), the rate
a long corpus run sees. The local engine starts its processes on every call, so it runs once ("every").
The 1-min load average before and after each pass is recorded: this machine is shared with other agents, so wall
times depend on their load. The CPU seconds that the pass cost (this process, its children and every Ray process,
read from /proc) depend much less on it; "files / CPU-hour" is the rate one fully used core would give.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # this benchmark's Ray processes use loopback only

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "data" / "trained_tiny.safetensors"


def make_corpus(root: Path, clips: int, duration: float) -> Path:
    from mtdistill.data.synthetic import make_talking_video

    root.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        path = root / f"clip{i:03d}.mp4"
        if not path.exists():
            make_talking_video(path, seed=1000 + i, duration_s=duration, offset_frames=(i % 7) - 3)
    return root


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process, its reaped children and every live descendant (Linux /proc).

    Ray's processes (GCS, raylets, workers) descend from this process in every configuration here, and a worker
    that exits is counted in its parent's cutime/cstime; so the difference over a pass is what the pass cost,
    whatever else runs on the machine."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        total += ru.ru_utime + ru.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _descendants(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


def run_pass(task: str, corpus: Path, work: Path, engine, workers: int, stride: int) -> dict:
    from mtdistill.data import prepare_ray
    from mtdistill.data.prepare import prepare
    from mtdistill.inference import score_ray
    from mtdistill.inference.score import ModelSpec, score_folder

    load0 = os.getloadavg()[0]
    cpu0 = tree_cpu_seconds()
    t0 = time.perf_counter()
    if task == "score":
        summary = score_folder(
            corpus,
            work / "scores.csv",
            ModelSpec(checkpoint=str(MODEL), stride=stride),
            workers=workers,
            progress=False,
            run_videos=score_ray.ray_runner(engine) if engine.is_ray else None,
        )
        n, ok = summary["videos"], summary["videos"] - summary["videos_failed"]
    else:
        summary = prepare(
            corpus,
            work / "store",
            workers=workers,
            split="train",
            progress=False,
            run_shards=prepare_ray.ray_runner(engine) if engine.is_ray else None,
        )
        n, ok = summary["inputs"], summary["stored"]
    seconds = time.perf_counter() - t0
    cpu = tree_cpu_seconds() - cpu0
    return {
        "files": n,
        "ok": ok,
        "seconds": round(seconds, 2),
        "files_per_hour": round(3600 * n / seconds),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_file": round(cpu / n, 3),
        "files_per_cpu_hour": round(3600 * n / cpu),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def measure(name: str, tasks: list[str], corpus: Path, tmp: Path, engine, workers: int, stride: int) -> list[dict]:
    out = []
    # the local engine starts its processes (and loads the model) on every call: one pass says it all
    phases = ("cold", "warm") if engine.is_ray else ("every",)
    for task in tasks:
        for phase in phases:
            work = Path(tempfile.mkdtemp(dir=tmp, prefix=f"{task}_"))
            res = run_pass(task, corpus, work, engine, workers, stride)
            res = {"config": name, "task": task, "phase": phase, **res}
            print(json.dumps(res), flush=True)
            out.append(res)
    return out


def _noop(i: int) -> int:
    return i


def noop_overhead(ray, n: int = 400) -> dict:
    """Ray's own cost per task: n empty tasks through the cluster (workers already started)."""
    remote = ray.remote(_noop).options(num_cpus=1)
    ray.get([remote.remote(i) for i in range(8)])
    load0 = os.getloadavg()[0]
    cpu0 = tree_cpu_seconds()
    t0 = time.perf_counter()
    ray.get([remote.remote(i) for i in range(n)])
    seconds = time.perf_counter() - t0
    cpu = tree_cpu_seconds() - cpu0
    res = {
        "config": "ray local",
        "task": "empty task",
        "phase": "warm",
        "files": n,
        "ok": n,
        "seconds": round(seconds, 2),
        "files_per_hour": round(3600 * n / seconds),
        "ms_per_task": round(1000 * seconds / n, 2),
        "cpu_s": round(cpu, 2),
        "cpu_s_per_file": round(cpu / n, 4),
        "files_per_cpu_hour": round(3600 * n / cpu),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(res), flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--stride", type=int, default=5)
    ap.add_argument("--cpus-per-node", type=int, default=1)
    ap.add_argument("--tasks", default="score,prepare")
    ap.add_argument("--configs", default="local1,local2,raylocal,ray1,ray2")
    ap.add_argument("--workdir", default=None, help="keep the corpus here (default: a temporary folder)")
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    args = ap.parse_args()

    import ray

    from mtdistill.engines import LOCAL, Engine
    from mtdistill.engines.ray_engine import connect
    from mtdistill.inference.sync import load_model

    load_model(str(MODEL))  # imports torch and the model code here, so no timed pass pays for it
    tasks = args.tasks.split(",")
    configs = args.configs.split(",")
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="bench_scale_"))
    corpus = make_corpus(tmp / "corpus", args.clips, args.duration)
    results: list[dict] = []
    for cfg in configs:
        if cfg.startswith("local"):
            results += measure(f"local w{cfg[5:]}", tasks, corpus, tmp, LOCAL, int(cfg[5:]), args.stride)
        elif cfg == "raylocal":
            engine = Engine("ray", address="local")
            connect(engine)
            results += measure("ray local", tasks, corpus, tmp, engine, 1, args.stride)
            results.append(noop_overhead(ray))
            ray.shutdown()
        elif cfg in ("ray1", "ray2"):
            from ray.cluster_utils import Cluster

            nodes = int(cfg[3:])
            args_node = {"num_cpus": args.cpus_per_node, "object_store_memory": 100 * 1024 * 1024}
            cluster = Cluster(initialize_head=True, head_node_args={**args_node, "include_dashboard": False})
            for _ in range(nodes - 1):
                cluster.add_node(**args_node)
            cluster.wait_for_nodes()
            engine = Engine("ray", address=cluster.address)
            connect(engine)
            label = f"ray {nodes} node{'s' if nodes > 1 else ''} x {args.cpus_per_node} CPU"
            results += measure(label, tasks, corpus, tmp, engine, 1, args.stride)
            ray.shutdown()
            cluster.shutdown()
        else:
            raise SystemExit(f"unknown config {cfg!r}")
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "ray": ray.__version__,
        "clips": args.clips,
        "duration_s": args.duration,
        "stride": args.stride,
    }
    head = "| config | task | pass | files | wall s | files/hour | CPU s / file | files / CPU-hour | load |"
    print("\n" + head)
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(
            f"| {r['config']} | {r['task']} | {r['phase']} | {r['files']} | {r['seconds']} | "
            f"{r['files_per_hour']:,} | {r['cpu_s_per_file']} | {r['files_per_cpu_hour']:,} | "
            f"{r['load_before']} / {r['load_after']} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
