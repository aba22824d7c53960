"""Load test of ``adaptformer serve``: concurrent clients, 8 tasks, real images, loopback only.

A registry of 8 tasks with random non-zero adapters is written on the real shared ViT-S/14
(DINOv2 architecture). For each batching mode the server is started as its own process
(``python -m adaptformer serve``), then N closed-loop clients (each sends a request, waits for the
answer, sends the next) post real Imagenette photos, one image and one task per request, the
(image, task) pairs drawn in a seeded random order. Every point is bounded in time
(``--seconds``) and in requests (``--max-requests``). Modes:

- ``cross-task``: rows of all tasks share a forward pass (the server's default);
- ``per-task``: the same queue, but the rows collected are run as one pass per task;
- ``off``: one request per forward pass.

Reported per point: requests (= images) per second, client-side p50/p99 latency, mean rows per
forward pass (from the server's /metrics). Checked per point: every request answered exactly
once with 200 (client side, and the server's request counter agrees), and every answer's top-5
equal to offline ``forward_tasks`` on the same image (labels in order, probabilities to 1e-4).
Also measured: ``forward_tasks`` called directly on batches of ``--max-batch-size`` rows of the
same images and tasks, against the server's own forward time per full batch.

Writes ``serve.json`` and ``serve.md`` under ``--out``, a plot ``serve_load.png`` and, with
``--docs``, the table into docs/serving.md::

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/serve.py --docs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import random
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import timm
import torch
from PIL import Image

import adaptformer as af
from adaptformer.adapters.trainable import backbone_fingerprint
from adaptformer.data import build_eval_transform
from adaptformer.data.safe import to_rgb
from adaptformer.serving.batcher import Batcher
from adaptformer.training.modality import data_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _docs import update_docs
from multitask import CLASSES, SCENARIOS, build, cpu_model

_log = logging.getLogger("benchmarks.serve")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ADAPTFORMER_SHARED", ROOT.parent / "shared"))
BACKBONE = SHARED / "assets" / "vit_small_patch14_dinov2.imgfocus.safetensors"
ARCH = "vit_small_patch14_dinov2"
MODES = ("cross-task", "per-task", "off")
TOP_K = 5
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


# -- the server as a process ---------------------------------------------------------------------
@dataclass
class Server:
    """A running ``adaptformer serve``: base URL, process, and the lines it logged so far."""

    proc: subprocess.Popen
    url: str
    log: list[str]


@contextmanager
def running(registry: Path, *flags: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``adaptformer serve --registry REGISTRY --port 0 FLAGS`` on loopback, with this
    checkout's ``src`` first on the path; killed on exit if still running."""
    environ = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    cmd = [sys.executable, "-m", "adaptformer", "serve", "--registry", str(registry)]
    proc = subprocess.Popen(
        # Every client of the load test comes from 127.0.0.1: the per-address upload cap (for
        # slow or hostile clients) would refuse the load the benchmark means to measure.
        [*cmd, "--host", "127.0.0.1", "--port", "0", "--max-uploads-per-client", "0", *flags],
        env=environ,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    log: list[str] = []
    port: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            log.append(line)
            if not port and (m := _LISTENING.search(line)):
                port.append(m.group(1))
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=read, daemon=True).start()
    try:
        ready.wait(600)
        if not port:
            raise RuntimeError("adaptformer serve did not start:\n" + "".join(log))
        yield Server(proc, f"http://127.0.0.1:{port[0]}", log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- inputs --------------------------------------------------------------------------------------
def make_registry(root: Path, checkpoint: Path, img_size: int, scenario: str) -> af.TaskRegistry:
    """8 tasks with random non-zero adapters, saved as `adaptformer train` run folders and
    registered; class names ``t3-class12`` so labels are checkable."""
    torch.manual_seed(0)
    model = build(checkpoint, img_size, SCENARIOS[scenario])
    plain = af.create_backbone(ARCH, checkpoint=checkpoint, img_size=img_size)
    meta = {"model": ARCH, "img_size": img_size, "multilabel": False,
            "backbone_sha256": backbone_fingerprint(plain), **data_stats(plain)}  # fmt: skip
    reg = af.TaskRegistry(root / "registry")
    for i, classes in enumerate(CLASSES):
        name = f"t{i}"
        run = root / "runs" / name
        labels = [f"{name}-class{c}" for c in range(classes)]
        af.save_adapter(model, run, name, metadata={**meta, "classes": labels})
        (run / "config.yaml").write_text(f"checkpoint: {checkpoint.resolve()}\n")
        reg.add(name, run)
    return reg


def write_tasks(
    reg: af.TaskRegistry,
    template: str,
    count: int,
    prefix: str = "t",
    classes: list[int] | None = None,
    seed: int = 0,
) -> list[str]:
    """``count`` tasks shaped like registered task ``template``, each with its own random
    weights, written into ``reg`` the way ``adaptformer tasks add`` leaves them (a folder of
    ``adapter_config.json`` + ``adapter_model.safetensors``, an index entry with the files'
    sha256) but without its per-add checks and copies: 1,000 adds would take minutes, this
    takes seconds. The server checks every task when it lists and when it loads it anyway.

    Args:
        template: a registered task with a plain linear head.
        prefix: task names are ``{prefix}{i}``.
        classes: class count of each task, cycled (default: the template's); labels are
            ``{name}-class{c}``.
        seed: tensors are drawn from a normal of each template tensor's std (0.05 if it is 0).
    """
    from safetensors.torch import load_file, save_file

    from adaptformer.serving.store import INDEX, task_digest

    folder = reg.path(template)
    info = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    width = int(info["num_classes"])
    heads = {k for k in tensors if k.startswith("head.")}
    if heads != {"head.weight", "head.bias"}:
        raise ValueError(f"task {template!r} must have a plain linear head, not {sorted(heads)}")
    gen = torch.Generator().manual_seed(seed)
    index = json.loads((reg.root / INDEX).read_text())
    names = []
    for i in range(count):
        name = f"{prefix}{i}"
        c = (classes or [width])[i % len(classes or [width])]
        target = reg.root / name
        target.mkdir()
        own = {}
        for k, t in tensors.items():
            shape = (c, *t.shape[1:]) if k in heads else tuple(t.shape)
            std = float(t.float().std()) if t.numel() > 1 else 0.0
            own[k] = torch.randn(shape, generator=gen) * (std or 0.05)
        save_file(own, str(target / "adapter_model.safetensors"), {"format": info["format"]})
        meta = {**info["metadata"], "classes": [f"{name}-class{j}" for j in range(c)]}
        (target / "adapter_config.json").write_text(
            json.dumps({**info, "num_classes": c, "metadata": meta}, indent=2) + "\n"
        )
        index["tasks"][name] = {
            "source": str(folder),
            "added": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "sha256": task_digest(target),
        }
        names.append(name)
    (reg.root / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names


def real_images(count: int) -> list[bytes]:
    """The first ``count`` Imagenette validation JPEGs (160 px), as uploaded bytes."""
    out = []
    with tarfile.open(SHARED / "data" / "imagenette.tar") as tar:
        for m in tar:
            if m.isfile() and "/val/" in m.name and m.name.endswith(".jpg"):
                out.append(tar.extractfile(m).read())
                if len(out) == count:
                    break
    return out


def offline(reg: af.TaskRegistry, images: list[bytes], batch: int) -> tuple[dict, dict]:
    """Top-5 of every (image, task) pair from ``forward_tasks`` in-process, and
    :func:`batcher_vs_direct` on ``batch`` mixed rows of them."""
    b = reg.backbone
    tf = build_eval_transform(b["img_size"], b["mean"], b["std"], b["interpolation"])
    x = torch.stack([tf(to_rgb(Image.open(io.BytesIO(d)))) for d in images])
    model = reg.build_model()
    names = reg.names()
    pairs = [(i, t) for i in range(len(images)) for t in names]
    top: dict[tuple[int, str], tuple[list[int], list[float]]] = {}
    with torch.inference_mode():
        for s in range(0, len(pairs), batch):
            chunk = pairs[s : s + batch]
            out = af.forward_tasks(model, x[[i for i, _ in chunk]], [t for _, t in chunk])
            for (i, t), row in zip(chunk, out.per_sample(), strict=True):
                v = row.softmax(0).topk(TOP_K)
                top[(i, t)] = (v.indices.tolist(), v.values.tolist())
        rng = random.Random(1)
        sample = rng.sample(pairs, batch)
        xb, tb = x[[i for i, _ in sample]], [t for _, t in sample]
    direct = batcher_vs_direct(model, xb, tb, repeats=7)
    return top, direct


def batcher_vs_direct(
    model: torch.nn.Module, x: torch.Tensor, tasks: list[str], repeats: int
) -> dict:
    """Seconds per pass of the same rows: ``forward_tasks`` called directly, and submitted to
    the server's :class:`Batcher` as one full batch (stacking rows, the pass, splitting the
    answers, waking the callers). Round-robin repeats after a warm-up; medians and the median
    of the per-repeat ratios (robust to the shared machine's load drifting)."""
    batcher = Batcher(model, torch.device("cpu"), max_batch=len(tasks), max_wait=600)
    batcher.start()
    rows = list(zip(x, tasks, strict=True))

    def direct() -> None:
        with torch.inference_mode():
            af.forward_tasks(model, x, tasks)

    def queued() -> None:
        for f in batcher.submit(rows):
            f.result()

    seconds: dict[str, list[float]] = {"direct": [], "batcher": []}
    try:
        direct(), queued()  # warm-up
        for r in range(repeats):
            for name, fn in (("direct", direct), ("batcher", queued))[:: 1 if r % 2 else -1]:
                t0 = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - t0)
    finally:
        batcher.stop()
    ratios = [b / d for b, d in zip(seconds["batcher"], seconds["direct"], strict=True)]
    return {
        "batch": len(tasks),
        "seconds_median": statistics.median(seconds["direct"]),
        "batcher_seconds_median": statistics.median(seconds["batcher"]),
        "batcher_over_direct": statistics.median(ratios),
        "seconds": seconds,
    }


# -- load ----------------------------------------------------------------------------------------
def metric(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def load(
    url: str,
    images: list[bytes],
    tasks: list[str],
    clients: int,
    seconds: float,
    max_requests: int,
    seed: int,
    weights: list[float] | None = None,
) -> dict:
    """``clients`` closed-loop clients for ``seconds`` or ``max_requests``, whichever first;
    tasks drawn uniformly, or by ``weights``."""
    import httpx

    rng = random.Random(seed)
    order = [
        (
            rng.randrange(len(images)),
            rng.choices(tasks, weights)[0] if weights else rng.choice(tasks),
        )
        for _ in range(max_requests)
    ]
    bodies = encode(url, images, order)
    answers: dict[int, list[tuple[int, bytes, float]]] = {}
    next_id = iter(range(max_requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                rid = next(next_id, None)
                if rid is None:
                    return
                body, kind = bodies[order[rid]]
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", content=body, headers={"content-type": kind})
                answers.setdefault(rid, []).append(
                    (r.status_code, r.content, time.perf_counter() - t0)
                )

        before = (await client.get("/metrics")).text
        t0 = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - t0
        after = (await client.get("/metrics")).text
    return {"order": order, "answers": answers, "wall": wall, "before": before, "after": after}


def encode(url: str, images: list[bytes], pairs: list[tuple[int, str]]) -> dict:
    """Multipart bodies of (image, task) requests, encoded once by httpx so that the clients
    spend little CPU while they measure."""
    import httpx

    bodies = {}
    for i, task in set(pairs):
        request = httpx.Request(
            "POST",
            url,
            files={"image": (f"{i}.jpg", images[i], "image/jpeg")},
            data={"tasks": task, "top_k": str(TOP_K)},
        )
        bodies[(i, task)] = (request.read(), request.headers["content-type"])
    return bodies


# what a point's slices add up from /metrics about paging (0 on a server without a budget)
_PAGING = {
    "loads": "adaptformer_task_loads_total",
    "refills": 'adaptformer_task_loads_total{kind="refill"}',
    "evictions": "adaptformer_task_evictions_total",
    "load_failures": "adaptformer_task_load_failures_total",
    "load_seconds": "adaptformer_task_load_seconds_sum",
}


def check(slices: list[dict], top: dict) -> dict:
    """Exactly-once and offline-equality checks of one point (its time slices), its numbers.
    Answers whose (image, task) is not in ``top`` are not compared (``top5_checked`` counts
    those that were)."""
    sent = ok = served = mismatched = checked = 0
    once, worst, wall = True, 0.0, 0.0
    latencies: list[float] = []
    passes = rows = forward = distinct = 0.0
    paging = dict.fromkeys(_PAGING, 0.0)
    for run in slices:
        answers, order = run["answers"], run["order"]

        def diff(name: str, run: dict = run) -> float:
            return metric(run["after"], name) - metric(run["before"], name)

        sent += len(answers)
        once &= all(len(a) == 1 for a in answers.values())
        served += diff('adaptformer_requests_total{status="200"}')
        passes += diff("adaptformer_batch_size_count")
        rows += diff("adaptformer_batch_size_sum")
        forward += diff("adaptformer_forward_seconds_sum")
        distinct += diff("adaptformer_batch_tasks_sum")
        for key, name in _PAGING.items():
            paging[key] += diff(name)
        wall += run["wall"]
        for rid, a in answers.items():
            status, content, seconds = a[0]
            latencies.append(seconds)
            if status != 200:
                continue
            ok += 1
            i, task = order[rid]
            if (i, task) not in top:
                continue
            checked += 1
            got = json.loads(content)["results"][0]["tasks"][task]["top"]
            want_idx, want_p = top[(i, task)]
            labels_ok = [p["label"] for p in got] == [f"{task}-class{c}" for c in want_idx]
            if [p["index"] for p in got] != want_idx or not labels_ok:
                mismatched += 1
            worst = max(worst, *(abs(p["prob"] - q) for p, q in zip(got, want_p, strict=True)))
    latencies.sort()
    return {
        "requests": sent,
        "answered_200": ok,
        "answered_exactly_once": once and ok == sent and served == sent,
        "server_counted_200": served,
        "top5_mismatches": mismatched,
        "top5_checked": checked,
        "max_prob_error": worst,
        "images_per_s": ok / wall,
        "wall_s": wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "forward_passes": passes,
        "mean_batch": rows / passes if passes else 0.0,
        "mean_forward_ms": 1000 * forward / passes if passes else 0.0,
        "mean_tasks_per_pass": distinct / passes if passes else 0.0,
        **paging,
    }


# -- report --------------------------------------------------------------------------------------
def _load(machine: dict) -> str:
    if "others_cpu" not in machine:
        return "other load not recorded"
    return f"other processes used {machine['others_cpu']:.0%} of them during the run"


class OtherLoad:
    """The share of the machine's CPU time that processes outside this benchmark used.

    Busy time of all cores (``/proc/stat``) minus this process's and its waited-for children's
    (the servers'), over wall time x cores: whether the numbers were taken on a quiet machine.
    """

    def __init__(self) -> None:
        self.wall, self.busy, self.own = time.monotonic(), _busy_seconds(), _own_seconds()

    def share(self) -> float:
        wall = time.monotonic() - self.wall
        others = (_busy_seconds() - self.busy) - (_own_seconds() - self.own)
        return max(0.0, others / (wall * (os.cpu_count() or 1)))


def _busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']}, {m['nproc']} cores ({_load(m)}), server with "
        f"1 torch thread and 1 decode thread; torch {report['torch']}, timm {report['timm']}; "
        f"{report['date']}",
        f"- {report['scenario']} on {report['backbone']} at {report['img_size']} px; "
        f"max batch {report['max_batch']}, max wait {report['max_wait_ms']} ms; each point "
        f"{report['seconds']} s or {report['max_requests']} requests in {report['rounds']} "
        "slices, the three servers taking turns; one image and one task per request",
        "",
        "| clients | batching | images/s | p50 ms | p99 ms | mean batch | ms per pass "
        "| x off | answered once | top-5 = offline |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    off = {r["clients"]: r["images_per_s"] for r in report["points"] if r["mode"] == "off"}
    for r in report["points"]:
        ratio = r["images_per_s"] / off[r["clients"]] if off.get(r["clients"]) else float("nan")
        lines.append(
            f"| {r['clients']} | {r['mode']} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} | {r['mean_batch']:.1f} | {r['mean_forward_ms']:.0f} "
            f"| {ratio:.2f} | {'yes' if r['answered_exactly_once'] else 'NO'} "
            f"({r['answered_200']}/{r['requests']}) "
            f"| {'yes' if r['top5_mismatches'] == 0 else 'NO'} (max err "
            f"{r['max_prob_error']:.1e}) |"
        )
    d = report["direct"]
    lines += [
        "",
        f"Same {d['batch']} mixed rows, in-process, no HTTP: `forward_tasks` called directly "
        f"{1000 * d['seconds_median']:.0f} ms per pass ({d['batch'] / d['seconds_median']:.1f} "
        f"images/s); through the server's batcher {1000 * d['batcher_seconds_median']:.0f} ms; "
        f"batcher / direct = {d['batcher_over_direct']:.3f} (median of "
        f"{len(d['seconds']['direct'])} paired repeats).",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode in MODES:
        pts = [r for r in report["points"] if r["mode"] == mode]
        if not pts:
            continue
        xs = [r["clients"] for r in pts]
        ax1.plot(xs, [r["images_per_s"] for r in pts], marker="o", label=mode)
        ax2.plot(xs, [r["p99_ms"] for r in pts], marker="o", label=mode)
    for ax, label in ((ax1, "images/s"), (ax2, "p99 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax2.set_yscale("log")
    ax1.legend(title="batching")
    fig.suptitle(
        f"adaptformer serve: 8 tasks, {report['img_size']} px, max batch {report['max_batch']}, "
        f"max wait {report['max_wait_ms']} ms"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- many tasks paged from disk ------------------------------------------------------------------
def zipf(count: int, s: float) -> list[float]:
    """Weights of ranks 1..count under a Zipf law of exponent ``s``."""
    return [1 / (k + 1) ** s for k in range(count)]


def make_many(root: Path, count: int, seed: int) -> af.TaskRegistry:
    """The 8 runs :func:`make_registry` wrote under ``root`` plus ``count - 8`` tasks of their
    shape (AdaptFormer-64) and their heads' class counts, each of its own random weights."""
    reg = af.TaskRegistry(root / "many")
    for run in sorted((root / "runs").iterdir()):
        reg.add(run.name, run)
    write_tasks(reg, "t0", count - len(reg.names()), prefix="z", classes=CLASSES, seed=seed)
    return reg


def process_memory(pid: int) -> dict[str, int]:
    """Resident set size of process ``pid`` now and at its peak (bytes, from /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out["rss" if key == "VmRSS" else "peak_rss"] = int(value.split()[0]) * 1024
    return out


async def open_loop(
    url: str,
    images: list[bytes],
    tasks: list[str],
    weights: list[float] | None,
    rate: float,
    seconds: float,
    seed: int,
) -> dict:
    """Requests arriving as a Poisson process of ``rate`` per second for ``seconds``, whatever
    the server answers (open loop); latency counts from each request's scheduled arrival."""
    import httpx

    rng = random.Random(seed)
    arrivals, t = [], rng.expovariate(rate)
    while t < seconds:
        task = rng.choices(tasks, weights)[0] if weights else rng.choice(tasks)
        arrivals.append((t, rng.randrange(len(images)), task))
        t += rng.expovariate(rate)
    order = [(i, task) for _, i, task in arrivals]
    bodies = encode(url, images, order)
    answers: dict[int, list[tuple[int, bytes, float]]] = {}
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        before = (await client.get("/metrics")).text
        t0 = time.perf_counter()

        async def one(rid: int, at: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            body, kind = bodies[order[rid]]
            r = await client.post("/v1/predict", content=body, headers={"content-type": kind})
            answers[rid] = [(r.status_code, r.content, time.perf_counter() - t0 - at)]

        await asyncio.gather(*(one(rid, at) for rid, (at, _, _) in enumerate(arrivals)))
        wall = time.perf_counter() - t0
        after = (await client.get("/metrics")).text
    return {"order": order, "answers": answers, "wall": wall, "before": before, "after": after}


def offline_sample(reg: af.TaskRegistry, images: list[bytes], pairs: set) -> dict:
    """Top-5 of each (image, task) of ``pairs`` with the task loaded alone (``load_adapter``
    into the bare backbone, one task at a time)."""
    b = reg.backbone
    tf = build_eval_transform(b["img_size"], b["mean"], b["std"], b["interpolation"])
    model = reg.build_model(names=[])
    by_task: dict[str, list[int]] = {}
    for i, task in sorted(pairs):
        by_task.setdefault(task, []).append(i)
    top = {}
    for task, idx in by_task.items():
        af.load_adapter(model, reg.path(task), name=task)
        x = torch.stack([tf(to_rgb(Image.open(io.BytesIO(images[i])))) for i in idx])
        with torch.inference_mode():
            out = af.forward_tasks(model, x, [task] * len(idx))
        for i, row in zip(idx, out.per_sample(), strict=True):
            v = row.softmax(0).topk(TOP_K)
            top[(i, task)] = (v.indices.tolist(), v.values.tolist())
        af.delete_adapter(model, task)
    return top


def answered_pairs(slices: list[dict], count: int, seed: int) -> set:
    """Up to ``count`` distinct (image, task) pairs answered with 200, drawn at random."""
    pairs = sorted({
        run["order"][rid] for run in slices for rid, a in run["answers"].items() if a[0][0] == 200
    })  # fmt: skip
    return set(random.Random(seed).sample(pairs, min(count, len(pairs))))


def paged_markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        f"- command: `{report['command']}`",
        f"- machine: {m['cpu']}, {m['nproc']} cores ({_load(m)}), each server with 1 torch "
        f"thread and 1 decode thread, run at nice {c['nice']}; torch {report['torch']}, timm "
        f"{report['timm']}; {report['date']}",
        f"- AdaptFormer-64 tasks (heads of {', '.join(map(str, CLASSES))} classes, cycled) on "
        f"{report['backbone']} at {c['img_size']} px; max batch {c['max_batch']}, max wait "
        f"{c['max_wait_ms']} ms; one image and one task per request. The 8-task server holds "
        f"every task (uniform requests); the {c['tasks']}-task server keeps at most "
        f"{c['resident']} in memory (`--max-resident-tasks {c['resident']}`), requests spread "
        f"over its tasks by a Zipf law (s = {c['zipf_s']}, ranks shuffled). Closed loop: "
        f"{c['clients']} clients, {c['seconds']} s per server in {c['rounds']} slices, the "
        f"servers taking turns, after {c['warm_requests']} warm-up requests each; open loop: "
        f"Poisson arrivals at {c['open_share']:.0%} of the paged server's closed-loop rate, "
        f"{c['open_seconds']} s per server",
        "",
        "| run | server | images/s | x 8 tasks | p50 ms | p99 ms | mean batch | tasks per pass "
        "| loads (refills) | evictions | ms per load | answered once | top-5 = offline |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for run in ("closed", "open"):
        base = next(r for r in report["points"] if r["run"] == run and r["server"] == "8 tasks")
        for r in (r for r in report["points"] if r["run"] == run):
            label = (
                f"closed, {c['clients']} clients"
                if run == "closed"
                else (f"open, {r['offered_per_s']:.1f}/s offered")
            )
            per_load = 1000 * r["load_seconds"] / r["loads"] if r["loads"] else float("nan")
            lines.append(
                f"| {label} | {r['server']} | {r['images_per_s']:.1f} "
                f"| {r['images_per_s'] / base['images_per_s']:.2f} | {r['p50_ms']:.0f} "
                f"| {r['p99_ms']:.0f} | {r['mean_batch']:.1f} | {r['mean_tasks_per_pass']:.1f} "
                f"| {r['loads']:.0f} ({r['refills']:.0f}) | {r['evictions']:.0f} "
                f"| {per_load:.0f} | {'yes' if r['answered_exactly_once'] else 'NO'} "
                f"({r['answered_200']}/{r['requests']}) "
                f"| {'yes' if r['top5_mismatches'] == 0 else 'NO'} ({r['top5_checked']} "
                f"checked, max err {r['max_prob_error']:.1e}) |"
            )
    mem = report["memory"]
    mib = 2**20
    lines += [
        "",
        "| memory | MiB |",
        "|---|---:|",
        f"| backbone weights (ViT-S/14, {mem['backbone_params']:,} parameters) "
        f"| {mem['backbone_bytes'] / mib:.1f} |",
        f"| one task's adapter + head in memory (mean over the registry) "
        f"| {mem['task_bytes'] / mib:.2f} |",
        f"| paged server: adapter memory at its peak ({mem['peak_tasks']} tasks resident, "
        f"budget {c['resident']}) | {mem['peak_adapter_bytes'] / mib:.1f} |",
        f"| backbone + {c['resident']} tasks, from the sizes above "
        f"| {(mem['backbone_bytes'] + c['resident'] * mem['task_bytes']) / mib:.1f} |",
        f"| {c['resident']} fine-tuned copies of the model, from the sizes above "
        f"| {c['resident'] * (mem['backbone_bytes'] + mem['head_bytes']) / mib:,.0f} |",
        f"| all {c['tasks']} tasks' adapters, from the sizes above "
        f"| {c['tasks'] * mem['task_bytes'] / mib:,.0f} |",
    ]
    for server, v in mem["processes"].items():
        lines.append(
            f"| {server} server process: resident set after start / at the end / peak "
            f"| {v['start']['rss'] / mib:.0f} / {v['end']['rss'] / mib:.0f} / "
            f"{v['end']['peak_rss'] / mib:.0f} |"
        )
    return "\n".join(lines) + "\n"


def paged(args: argparse.Namespace, argv: list[str] | None) -> int:
    """The paged-server benchmark (``--many-tasks``): see docs/serving.md#paging."""
    others = OtherLoad()
    torch.set_num_threads(1)
    images = real_images(args.images)
    tasks8 = [f"t{i}" for i in range(len(CLASSES))]
    points: list[dict] = []
    memory: dict = {"processes": {}}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        reg8 = make_registry(root, args.checkpoint, args.img_size, args.scenario)
        start = time.perf_counter()
        many = make_many(root, args.many_tasks, seed=1)
        _log.info("wrote %d tasks in %.0f s", args.many_tasks, time.perf_counter() - start)
        names = many.names()
        ranked = names[:]
        random.Random(7).shuffle(ranked)
        weights = zipf(len(ranked), args.zipf_s)
        common = ["--threads", "1", "--decode-threads", "1", "--max-batch-size",
                  str(args.max_batch_size), "--max-wait-ms", str(args.max_wait_ms),
                  "--max-queue", "1024"]  # fmt: skip
        servers = {
            "8 tasks": (stack.enter_context(running(reg8.root, *common)), tasks8, None),
            f"{args.many_tasks} tasks": (
                stack.enter_context(running(
                    many.root, *common, "--max-resident-tasks", str(args.max_resident_tasks)
                )),
                ranked,
                weights,
            ),
        }  # fmt: skip
        for key, (server, tasks, w) in servers.items():
            memory["processes"][key] = {"start": process_memory(server.proc.pid)}
            asyncio.run(load(server.url, images, tasks, args.closed_clients, 600, args.warm_requests,
                             seed=99, weights=w))  # fmt: skip
        closed: dict[str, list[dict]] = {key: [] for key in servers}
        keys = list(servers)
        for r in range(args.rounds):
            for key in keys[r % 2 :] + keys[: r % 2]:
                server, tasks, w = servers[key]
                closed[key].append(asyncio.run(load(
                    server.url, images, tasks, args.closed_clients, args.seconds / args.rounds,
                    args.max_requests // args.rounds, seed=1000 + r, weights=w,
                )))  # fmt: skip
        paged_key = keys[1]
        capacity = sum(len(s["answers"]) for s in closed[paged_key]) / sum(
            s["wall"] for s in closed[paged_key]
        )
        rate = args.open_share * capacity
        opened: dict[str, list[dict]] = {key: [] for key in servers}
        for key in keys:
            server, tasks, w = servers[key]
            opened[key].append(asyncio.run(open_loop(
                server.url, images, tasks, w, rate, args.open_seconds, seed=2000,
            )))  # fmt: skip
        for key, (server, _, _) in servers.items():
            memory["processes"][key]["end"] = process_memory(server.proc.pid)
        final = asyncio.run(_text(servers[paged_key][0].url + "/metrics"))
        for key, reg in ((keys[0], reg8), (paged_key, many)):
            sample = answered_pairs(closed[key] + opened[key], args.check, seed=5)
            top = offline_sample(reg, images, sample)
            for run, slices in (("closed", closed[key]), ("open", opened[key])):
                point = {"run": run, "server": key, **check(slices, top)}
                if run == "open":
                    point["offered_per_s"] = rate
                _log.info("%s", {k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in point.items()})  # fmt: skip
                points.append(point)
        backbone = many.build_model(names=[])
        sizes = _listing(many)
        memory.update(
            backbone_params=sum(p.numel() for p in backbone.parameters()),
            backbone_bytes=sum(t.nbytes for t in backbone.state_dict().values()),
            task_bytes=statistics.mean(v["bytes"] for v in sizes),
            head_bytes=statistics.mean(v["head_bytes"] for v in sizes),
            peak_tasks=int(metric(final, "adaptformer_resident_tasks_peak")),
            peak_adapter_bytes=int(metric(final, "adaptformer_resident_adapter_bytes_peak")),
        )
    report = {
        "command": shlex.join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "others_cpu": others.share()},
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": args.checkpoint.name,
        "config": {
            "tasks": args.many_tasks,
            "resident": args.max_resident_tasks,
            "zipf_s": args.zipf_s,
            "img_size": args.img_size,
            "max_batch": args.max_batch_size,
            "max_wait_ms": args.max_wait_ms,
            "clients": args.closed_clients,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "warm_requests": args.warm_requests,
            "open_share": args.open_share,
            "open_seconds": args.open_seconds,
            "nice": os.nice(0),
            "capacity_per_s": capacity,
        },
        "memory": memory,
        "points": points,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(paged_markdown(report))
    if args.docs:
        update_docs(paged_markdown(report), ROOT / "docs" / "serving.md", "serve-paged")
    print(paged_markdown(report))
    return 0


def _listing(reg: af.TaskRegistry) -> list[dict]:
    """Bytes of each task's tensors and of its head, from the safetensors headers."""
    import math

    from adaptformer.utils.files import safetensors_header

    out = []
    for name in reg.names():
        header = safetensors_header(reg.path(name) / "adapter_model.safetensors")
        sizes = {k: math.prod(t.shape) * 4 for k, t in header.items()}
        heads = sum(v for k, v in sizes.items() if k.startswith("head."))
        out.append({"name": name, "bytes": sum(sizes.values()), "head_bytes": heads})
    return out


async def _text(url: str) -> str:
    import httpx

    async with httpx.AsyncClient(timeout=60) as client:
        return (await client.get(url)).text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=BACKBONE, help="ViT-S/14 safetensors")
    p.add_argument("--img-size", type=int, default=56, help="input size (default: 56)")
    p.add_argument("--scenario", choices=list(SCENARIOS), default="adaptformer-64 x 8")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--seconds", type=float, default=24, help="per point (default: 24)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="time slices per point, the modes taking turns (default: 3)",
    )
    p.add_argument("--max-requests", type=int, default=1500, help="per point (default: 1500)")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=20)
    p.add_argument("--images", type=int, default=48, help="distinct photos (default: 48)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--name", default="serve", help="file stem under --out (default: serve)")
    p.add_argument("--docs", action="store_true", help="write the table into docs/serving.md")
    paging = p.add_argument_group("paging: a registry of many tasks against the 8-task server")
    paging.add_argument(
        "--many-tasks",
        type=int,
        default=0,
        help="run the paging benchmark with this many tasks (e.g. 1000)",
    )
    paging.add_argument("--max-resident-tasks", type=int, default=64)
    paging.add_argument("--closed-clients", type=int, default=32)
    paging.add_argument("--zipf-s", type=float, default=1.1)
    paging.add_argument(
        "--warm-requests",
        type=int,
        default=400,
        help="requests each server answers before the measurement",
    )
    paging.add_argument(
        "--open-share",
        type=float,
        default=0.7,
        help="open-loop rate as a share of the paged closed-loop rate",
    )
    paging.add_argument("--open-seconds", type=float, default=60)
    paging.add_argument(
        "--check",
        type=int,
        default=200,
        help="answered (image, task) pairs compared with offline per server",
    )
    paging.add_argument(
        "--tmp",
        type=Path,
        default=None,
        help="where the registries are written (1,000 ViT-S tasks: 2.5 GB)",
    )
    args = p.parse_args(argv)
    if args.many_tasks:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        for noisy in ("httpx", "adaptformer"):  # a line per request, per adapter injected
            logging.getLogger(noisy).setLevel(logging.WARNING)
        if not args.checkpoint.is_file():
            raise FileNotFoundError(f"{args.checkpoint} not found: pass --checkpoint PATH")
        return paged(args, argv)
    others = OtherLoad()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"{args.checkpoint} not found: pass --checkpoint PATH")
    torch.set_num_threads(1)
    images = real_images(args.images)
    points = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        reg = make_registry(Path(tmp), args.checkpoint, args.img_size, args.scenario)
        top, direct = offline(reg, images, args.max_batch_size)
        _log.info("direct vs batcher: %s", {k: v for k, v in direct.items() if k != "seconds"})
        servers = {}
        for mode in args.modes:  # all at once: an idle server costs nothing
            flags = ["--batching", mode, "--threads", "1", "--decode-threads", "1",
                     "--max-batch-size", str(args.max_batch_size),
                     "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1024"]  # fmt: skip
            servers[mode] = stack.enter_context(running(reg.root, *flags))
            asyncio.run(load(servers[mode].url, images, reg.names(), 4, 3, 40, seed=99))  # warm
        for clients in args.clients:
            slices: dict[str, list[dict]] = {mode: [] for mode in args.modes}
            for r in range(args.rounds):  # modes take turns: the shared machine's load drifts
                for mode in args.modes[r % len(args.modes) :] + args.modes[: r % len(args.modes)]:
                    slices[mode].append(asyncio.run(load(
                        servers[mode].url, images, reg.names(), clients,
                        args.seconds / args.rounds, args.max_requests // args.rounds,
                        seed=1000 * clients + r,
                    )))  # fmt: skip
            for mode in args.modes:
                point = {"mode": mode, "clients": clients, **check(slices[mode], top)}
                _log.info("%s", {k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in point.items()})  # fmt: skip
                points.append(point)
    report = {
        "command": shlex.join(["python", "benchmarks/serve.py", *(argv or sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "nproc": os.cpu_count(), "others_cpu": others.share()},
        "torch": torch.__version__,
        "timm": timm.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "backbone": args.checkpoint.name,
        "scenario": args.scenario,
        "img_size": args.img_size,
        "max_batch": args.max_batch_size,
        "max_wait_ms": args.max_wait_ms,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "max_requests": args.max_requests,
        "direct": direct,
        "points": points,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(report))
    plot(report, args.out / f"{args.name}_load.png")
    if args.docs:
        update_docs(markdown(report), ROOT / "docs" / "serving.md", f"{args.name}-load", args.out)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
