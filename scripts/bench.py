"""Speed benchmark: how much of a DANN training step is data pipeline, and time to accuracy.

    python scripts/bench.py                      # data from $TRANSFERLAB_DATA or ./data
    python scripts/bench.py --data-root ../shared/data --json docs/bench.json
    python scripts/bench.py --throughput RUN_DIR # training img/s of a finished DANN run
    python scripts/bench.py --storage memory mapped --digit-folders /tmp/digits
    python scripts/bench.py --data folders       # the image-folder path at 224 px (its own
                                                 # options: scripts/bench_folders.py)

Measures images per second (source + target images) and the minor page faults of the timed
part (`getrusage`), each part in a fresh process, so that nothing done before it (loading data,
another part) sets the allocator state it starts from:
  (a) the DANN update alone on fixed float batches (the bound). Its process never loads the
      dataset: the batches are random uint8 images of the pair's shape, converted once (the
      update's cost does not depend on pixel values),
  (b) our DANN training loop (`transferlab.train.fit`), per --storage: batches indexed from the
      uint8 tensors, converted on the batch, the update, lr schedule, NaN check, logging.
      `memory`: the pair's loaders, in memory; `mapped`: the same digits as PNG folders
      (written by scripts/make_digit_folders.py, --digit-folders) through `data=folders`,
      whose uint8 cache file is memory-mapped, not loaded,
  (c) the same update fed by a standard torchvision pipeline: per-sample PIL images through
      `transforms`, collated by a `DataLoader`,
(a) and (b) with glibc malloc's thresholds pinned (`trainer.malloc_tuning`, the default) and
without, (c) with; --rounds rounds interleave the processes, and each figure is the median
over rounds. Then a fresh `python -m transferlab method=dann` with the default config trains
on the pair, evaluating every 500 steps: the wall time of its first evaluation at or above the
DANN paper's 0.7666 target accuracy, and its training throughput.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from transferlab.allocator import glibc_version, tune_malloc
from transferlab.config import compose
from transferlab.data.domain import Domain, DomainPair, Split, as_input
from transferlab.experiment import build, build_method, model_shape, resolve_device
from transferlab.train import TrainerConfig, fit

PAPER_DANN = 0.7666
# How (b) loads the pair for each --storage choice: the data overrides of the benchmark's config.
# `mapped` reads the folders of scripts/make_digit_folders.py with that script's settings; its
# cache goes to the usual data.cache_dir.
STORAGES: dict[str, list[str]] = {
    "memory": ["data={data}", "data.root={root}"],
    "mapped": ["data=folders", "data.source.path={folders}/mnist",
               "data.target.path={folders}/mnistm", "data.storage_size=28", "data.augment=null",
               "data.source_val_size=5000", "data.target_val_size=1000", "data.in_memory=false"],
}
WARMUP_STEPS = 20


class PerSampleImages(Dataset):
    """What a typical PyTorch DA codebase does: one PIL image per sample, then transforms."""

    def __init__(self, split: Split, channels: int) -> None:
        self.images, self.labels = split.images.cpu(), split.labels.cpu()
        mode = transforms.Grayscale(channels) if split.images.shape[1] == 1 else transforms.Lambda(
            lambda im: im)
        self.transform = transforms.Compose([
            mode, transforms.ToTensor(), transforms.Normalize([0.5] * channels, [0.5] * channels)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        array = self.images[i].permute(1, 2, 0).squeeze(-1).numpy()
        return self.transform(Image.fromarray(array)), int(self.labels[i])


def endless(loader: DataLoader) -> Iterator:
    """Cycle through epochs, as DA code does with the shorter domain's loader."""
    while True:
        yield from loader


Mark = tuple[float, int, float]


def mark() -> Mark:
    """Wall time, minor page faults and CPU time (all threads) of this process so far."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), use.ru_minflt, use.ru_utime + use.ru_stime


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step: Callable[[], Any], n_steps: int, images_per_step: int,
          device: torch.device) -> dict[str, float]:
    for _ in range(WARMUP_STEPS):
        step()
    sync(device)
    start = mark()
    for _ in range(n_steps):
        step()
    sync(device)
    return rate(n_steps, images_per_step, start, mark())


def rate(n_steps: int, images_per_step: int, start: Mark, end: Mark) -> dict[str, float]:
    """`cpu_busy`: CPU seconds per second; below the thread count, other processes had cores
    (or the threads waited)."""
    seconds = end[0] - start[0]
    return {"img_s": n_steps * images_per_step / seconds,
            "minflt_per_step": (end[1] - start[1]) / n_steps,
            "cpu_busy": (end[2] - start[2]) / seconds,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---------------------------------------------------------------- parts, each in its own process

def part_a(cfg: DictConfig, device: torch.device, shape: list[int], steps: int) -> dict:
    """The bound: the update alone, on a stand-in pair of `shape` (channels, size, classes)."""
    channels, size, classes = shape
    bs = cfg.trainer.batch_size
    g = torch.Generator().manual_seed(0)

    def split() -> Split:
        images = torch.randint(0, 256, (bs, channels, size, size), generator=g, dtype=torch.uint8)
        return Split(images, torch.randint(0, classes, (bs,), generator=g))

    stand_in = DomainPair(Domain("source", split(), split()), Domain("target", split(), split()),
                          split(), split()).to(device)
    method = build_method(cfg, model_shape(stand_in)).to(device,
                                                          memory_format=torch.channels_last)
    stage = method.stages(stand_in.training_view(target_labels=False))[0]
    method.train()
    fixed = {name: (as_input(s.images, channels, method.network.normalization), s.labels)
             for name, s in stage.data.items()}
    return timed(lambda: stage.update(fixed, 0.5), steps, 2 * bs, device)


def part_b(cfg: DictConfig, device: torch.device, steps: int) -> dict:
    """Our loop: `fit`, timed between its first and its last log call, so that neither the
    start-up of the streams nor the final evaluation is in the window."""
    pair, method = build(cfg, device)
    every = cfg.trainer.log_every
    warmup = -(-WARMUP_STEPS // every) * every  # the first log step after the warm-up
    method.steps = warmup + -(-steps // every) * every  # DANN's one stage runs method.steps
    marks: list[tuple[int, Mark]] = []
    fit(method, pair, TrainerConfig(batch_size=cfg.trainer.batch_size, eval_every=method.steps,
                                    log_every=every, progress_bar=False), 0,
        lambda _, step: marks.append((step, mark())), evaluators={})
    # The last step is logged twice: its losses, then the accuracies of the final evaluation.
    (s0, start), (s1, end) = (next(m for m in marks if m[0] == s) for s in (warmup, method.steps))
    return {**rate(s1 - s0, 2 * cfg.trainer.batch_size, start, end),
            "shape": [pair.channels, pair.image_size, pair.num_classes]}


def part_c(cfg: DictConfig, device: torch.device, workers: int, steps: int) -> dict:
    """The update fed by a per-sample torchvision `DataLoader` (page faults: this process
    only, not the workers')."""
    pair, method = build(cfg, device)
    stage = method.stages(pair.training_view(target_labels=False))[0]
    method.train()
    bs = cfg.trainer.batch_size
    loaders = {name: endless(DataLoader(PerSampleImages(split, pair.channels), batch_size=bs,
                                        shuffle=True, num_workers=workers, drop_last=True,
                                        persistent_workers=workers > 0))
               for name, split in stage.data.items()}

    def loader_step() -> None:
        batch = {}
        for name, it in loaders.items():
            x, y = next(it)
            batch[name] = (x.to(device, memory_format=torch.channels_last), y.to(device))
        stage.update(batch, 0.5)

    return timed(loader_step, steps, 2 * bs, device)


def run_part(args: argparse.Namespace) -> None:
    """The child process: apply (or not) the setting first, as `python -m transferlab` does
    before it loads data, measure one part, print it as one JSON line."""
    tuned = tune_malloc(args.malloc == "on")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose(base_overrides(args, args.storage[0]))
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    if args.part == "a":
        result = part_a(cfg, device, args.shape, args.steps)
    elif args.part == "b":
        result = part_b(cfg, device, args.steps)
    else:
        result = part_c(cfg, device, args.workers[0], args.steps)
    print(json.dumps({**result, "malloc_tuned": tuned, "threads": torch.get_num_threads()}))


# ------------------------------------------------------------------------------ the orchestrator

def base_overrides(args: argparse.Namespace, storage: str = "memory") -> list[str]:
    data = [o.format(data=args.data, root=args.data_root, folders=args.digit_folders)
            for o in STORAGES[storage]]
    overrides = ["method=dann", *data, f"device={args.device}", "trainer.progress_bar=false"]
    return overrides + ([f"trainer.num_threads={args.threads}"] if args.threads else [])


def child(args: argparse.Namespace, part: str, malloc: str, *extra: str) -> dict:
    common = ["--data", args.data, "--data-root", args.data_root, "--device", args.device,
              "--steps", str(args.steps)]
    if args.digit_folders:
        common += ["--digit-folders", str(args.digit_folders)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    cmd = [sys.executable, __file__, "--part", part, "--malloc", malloc, *common, *extra]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_of(results: list[dict]) -> dict:
    return {"img_s": round(statistics.median(r["img_s"] for r in results)),
            "img_s_rounds": [round(r["img_s"]) for r in results],
            "minflt_per_step": round(statistics.median(r["minflt_per_step"] for r in results), 1),
            "cpu_busy": round(statistics.median(r["cpu_busy"] for r in results), 2),
            "max_rss_mb": round(statistics.median(r["max_rss_mb"] for r in results)),
            "threads": results[0]["threads"]}


def fresh_processes(args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    """Every part in its own process, rounds interleaved; on/off alternate their order."""
    runs: dict[str, dict[str, list[dict]]] = {}
    shape: list[int] = []
    for r in range(args.rounds):
        order = ("on", "off") if r % 2 == 0 else ("off", "on")
        for storage in args.storage:
            for malloc in order:
                result = child(args, "b", malloc, "--storage", storage)
                shape = result["shape"]  # (a) needs it, and must not load the data to learn it
                runs.setdefault(f"b:{storage}", {}).setdefault(malloc, []).append(result)
        for malloc in order:
            result = child(args, "a", malloc, "--shape", *map(str, shape))
            runs.setdefault("a", {}).setdefault(malloc, []).append(result)
        for workers in args.workers:
            result = child(args, "c", "on", "--workers", str(workers))
            runs.setdefault(f"c:{workers}", {}).setdefault("on", []).append(result)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{key}/{m} {v[-1]['img_s']:.0f}" for key, by in runs.items() for m, v in by.items()),
            flush=True)
    return {key: {m: median_of(v) for m, v in by.items()} for key, by in runs.items()}


def training_throughput(run_dir: Path) -> dict[str, float]:
    """Training images/s of a finished DANN run, from the wall times of its TensorBoard loss
    events (every `trainer.log_every` steps), leaving out the intervals that hold an
    evaluation; checkpoints, logging and everything else the loop does stay in."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record = json.loads((run_dir / "results.json").read_text())
    if record["choices"]["method"] != "dann":
        raise SystemExit(f"{run_dir} is a {record['choices']['method']} run; this counts DANN's "
                         "2 x batch_size images per step")
    evaluated = {h["step"] for h in record["history"]}
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    marks = [(e.step, e.wall_time) for e in events.Scalars("loss/classification")]
    kept = [(s1 - s0, t1 - t0) for (s0, t0), (s1, t1) in itertools.pairwise(marks)
            if s0 not in evaluated]  # an evaluation runs right after the log of its step
    steps, seconds = sum(s for s, _ in kept), sum(t for _, t in kept)
    per_step = 2 * record["config"]["trainer"]["batch_size"]
    return {"train_img_s": round(steps * per_step / seconds), "timed_steps": steps,
            "wall_time_s": record["wall_time_s"]}


def time_to_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "transferlab", *base_overrides(args),
               "trainer.eval_every=500", "trainer.checkpoint_every=0", f"hydra.run.dir={out}"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        history = json.loads((Path(out) / "results.json").read_text())["history"]
        speed = training_throughput(Path(out))
    figures = {"dann_full_run_s": speed["wall_time_s"], "dann_train_img_s": speed["train_img_s"],
               "dann_final_target_acc": history[-1]["target_acc"]}
    reached = next((h for h in history if h["target_acc"] >= PAPER_DANN), None)
    if reached:
        figures["time_to_0.7666_s"] = reached["time_s"]
        figures["time_to_0.7666_step"] = reached["step"]
        print(f"DANN reached {reached['target_acc']:.4f} >= {PAPER_DANN} on MNIST-M test at "
              f"step {reached['step']}, {reached['time_s']:.0f} s into training (evaluating "
              f"every 500 steps; whole run {speed['wall_time_s']:.0f} s, final "
              f"{history[-1]['target_acc']:.4f}; training {speed['train_img_s']} img/s)")
    else:
        print(f"DANN did not reach {PAPER_DANN} (final {history[-1]['target_acc']:.4f})")
    return figures


def report(parts: dict[str, dict[str, dict]], storages: list[str]) -> dict[str, Any]:
    def row(label: str, m: dict) -> str:
        return f"{label:<44}{m['img_s']:>8} img/s {m['minflt_per_step']:>10} faults/step"

    a = parts["a"]
    for malloc in ("on", "off"):
        print(row(f"(a) update alone, malloc tuning {malloc}", a[malloc]))
    for storage in storages:
        for malloc in ("on", "off"):
            print(row(f"(b) our loop, {storage}, malloc tuning {malloc}",
                      parts[f"b:{storage}"][malloc]))
    c = {key.split(":")[1]: by["on"] for key, by in parts.items() if key.startswith("c:")}
    for workers, m in c.items():
        print(row(f"(c) DataLoader, {workers} workers", m))
    b_over_a = {s: {m: round(parts[f"b:{s}"][m]["img_s"] / a[m]["img_s"], 3) for m in a}
                for s in storages}
    fastest_loader = max(v["img_s"] for v in c.values())
    b_over_c = round(parts[f"b:{storages[0]}"]["on"]["img_s"] / fastest_loader, 3)
    tuning_gain = {key: round(by["on"]["img_s"] / by["off"]["img_s"], 3)
                   for key, by in parts.items() if "off" in by}
    print(f"b/a by storage and malloc tuning: {b_over_a}; b/c = {b_over_c} (fastest DataLoader); "
          f"on/off: {tuning_gain}")
    return {"b_over_a": b_over_a, "b_over_c": b_over_c, "malloc_tuning_gain": tuning_gain}


def main() -> None:
    # The image-folder benchmark has options of its own: hand it everything but `--data`.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--data")
    known, rest = first.parse_known_args()
    if known.data == "folders":
        import bench_folders  # scripts/ is on the path of a script run from it

        bench_folders.main(rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("TRANSFERLAB_DATA", "./data"))
    parser.add_argument("--steps", type=int, default=1000, help="timed steps per figure")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians)")
    parser.add_argument("--storage", nargs="+", default=["memory"], choices=sorted(STORAGES),
                        help="data paths measured for (b)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts tried for (c); b/c uses the fastest")
    parser.add_argument("--data", default="mnist_mnistm",
                        help="the pair (tiny: a quick check; folders: scripts/bench_folders.py)")
    parser.add_argument("--digit-folders", type=Path,
                        help="with --storage mapped: the output of scripts/make_digit_folders.py")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-time-to-accuracy", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--throughput", type=Path, metavar="RUN_DIR",
                        help="only print the training img/s of this finished DANN run")
    parser.add_argument("--part", choices=("a", "b", "c"),
                        help="only measure this part, in this process (what each round starts)")
    parser.add_argument("--malloc", choices=("on", "off"), default="on",
                        help="with --part: trainer.malloc_tuning on or off")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("CHANNELS", "SIZE", "CLASSES"),
                        help="with --part a: the pair's input shape")
    args = parser.parse_args()
    if "mapped" in args.storage and (args.data != "mnist_mnistm" or not args.digit_folders):
        parser.error("--storage mapped reads MNIST and MNIST-M as folders: it needs --data "
                     "mnist_mnistm and --digit-folders DIR (scripts/make_digit_folders.py DIR)")
    if args.part:
        run_part(args)
        return
    if args.throughput:
        print(json.dumps(training_throughput(args.throughput)))
        return

    load_before = os.getloadavg()
    parts = fresh_processes(args)
    bs = compose(base_overrides(args)).trainer.batch_size
    figures: dict[str, Any] = {
        "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
        "device": str(resolve_device(args.device)), "cpu_threads": parts["a"]["on"]["threads"],
        "cpu_cores": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__, "glibc": glibc_version(), "batch": f"{bs} source + {bs} target",
        "steps": args.steps, "rounds": args.rounds, "load_avg_1_5_15_before": load_before,
        "parts": parts, **report(parts, args.storage)}
    if not args.skip_time_to_accuracy:
        figures.update(time_to_accuracy(args))
    figures["load_avg_1_5_15_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
