"""Speed benchmark: how much of a DANN training step is data pipeline, and time to accuracy.

    python scripts/bench.py                      # data from $TRANSFERLAB_DATA or ./data
    python scripts/bench.py --data-root ../shared/data --skip-time-to-accuracy

Measures, in one process on one machine, images per second (source + target images) of
  (a) the DANN update alone on batches already in memory as float tensors (the bound),
  (b) our full DANN training loop (`transferlab.train.fit`): batches indexed from the uint8
      tensors, converted on the batch, the update, lr schedule, NaN check,
  (c) the same update fed by a standard torchvision pipeline: per-sample PIL images through
      `transforms`, collated by a `DataLoader`,
prints b/a and b/c, and then trains DANN with the default config on MNIST→MNIST-M, reporting
the wall time of the first evaluation at or above the DANN paper's 0.7666 target accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from transferlab.cli import CONFIG_DIR, build, build_evaluators, resolve_device, run
from transferlab.data.domain import Split, as_input
from transferlab.evaluation import evaluate
from transferlab.train import TrainerConfig, fit

PAPER_DANN = 0.7666


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


def compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def endless(loader: DataLoader) -> Iterator:
    """Cycle through epochs, as DA code does with the shorter domain's loader."""
    while True:
        yield from loader


def images_per_second(step, n_steps: int, images_per_step: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    return n_steps * images_per_step / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("TRANSFERLAB_DATA", "./data"))
    parser.add_argument("--steps", type=int, default=300, help="steps per throughput figure")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="DataLoader worker counts tried for (c); the fastest is used")
    parser.add_argument("--data", default="mnist_mnistm", help="the pair (tiny: a quick check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-time-to-accuracy", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    overrides = ["method=dann", f"data={args.data}", f"data.root={args.data_root}",
                 f"device={args.device}", "trainer.progress_bar=false"]
    if args.threads:
        overrides.append(f"trainer.num_threads={args.threads}")
        torch.set_num_threads(args.threads)
    cfg = compose(overrides)
    device = resolve_device(cfg.device)
    torch.manual_seed(0)
    pair, method = build(cfg, device)
    stage = method.stages(pair.training_view(target_labels=False))[0]
    evaluators = build_evaluators(cfg)
    bs = cfg.trainer.batch_size
    per_step = 2 * bs
    method.train()

    # (a) the bound: the update on fixed float batches already on the device
    fixed = {name: (as_input(split.images[:bs], pair.channels, method.network.normalization),
                    split.labels[:bs])
             for name, split in stage.data.items()}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def bound_step() -> None:
        stage.update(fixed, 0.5)

    a = images_per_second(bound_step, args.steps, per_step)
    sync()

    # (b) our loop, end to end; one final evaluation is timed separately and subtracted
    def trainer(steps: int) -> TrainerConfig:
        method.steps = steps  # DANN's one stage runs method.steps steps
        return TrainerConfig(batch_size=bs, eval_every=steps, log_every=50, progress_bar=False)

    fit(method, pair, trainer(10), 0, lambda *_: None, evaluators)  # warm-up
    start = time.perf_counter()
    fit(method, pair, trainer(args.steps), 0, lambda *_: None, evaluators)
    sync()
    fit_time = time.perf_counter() - start
    start = time.perf_counter()
    evaluate(method, pair, evaluators, cfg.trainer.eval_batch_size)
    eval_time = time.perf_counter() - start
    b = args.steps * per_step / (fit_time - eval_time)

    # (c) the same update fed by a per-sample torchvision DataLoader pipeline
    c_by_workers = {}
    for workers in args.workers:
        loaders = {name: endless(DataLoader(PerSampleImages(split, pair.channels),
                                            batch_size=bs, shuffle=True, num_workers=workers,
                                            drop_last=True, persistent_workers=workers > 0))
                   for name, split in stage.data.items()}

        def loader_step() -> None:
            batch = {}
            for name, it in loaders.items():  # noqa: B023 - used within this iteration only
                x, y = next(it)
                batch[name] = (x.to(device, memory_format=torch.channels_last), y.to(device))
            stage.update(batch, 0.5)

        c_by_workers[workers] = images_per_second(loader_step, args.steps, per_step)
        sync()
    c = max(c_by_workers.values())

    figures = {
        "device": str(device), "cpu_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__, "batch": f"{bs} source + {bs} target",
        "a_bound_img_s": round(a), "b_ours_img_s": round(b),
        "c_dataloader_img_s": {str(k): round(v) for k, v in c_by_workers.items()},
        "b_over_a": round(b / a, 3), "b_over_c": round(b / c, 3),
    }
    print(f"(a) update on in-memory batches: {a:8.0f} img/s")
    print(f"(b) transferlab training loop:   {b:8.0f} img/s   b/a = {b / a:.3f}")
    for workers, v in c_by_workers.items():
        print(f"(c) DataLoader, {workers} workers:     {v:8.0f} img/s")
    print(f"b/c = {b / c:.2f} (against the fastest DataLoader setting)")

    if not args.skip_time_to_accuracy:
        with tempfile.TemporaryDirectory() as out:
            full = compose([*overrides, "trainer.eval_every=500", "trainer.checkpoint_every=0"])
            start = time.perf_counter()
            run(full, Path(out), {"data": args.data, "backbone": "dann_mnist",
                                  "method": "dann"})
            total = time.perf_counter() - start
            history = json.loads((Path(out) / "results.json").read_text())["history"]
        reached = next((h for h in history if h["target_acc"] >= PAPER_DANN), None)
        figures["dann_full_run_s"] = round(total, 1)
        figures["dann_final_target_acc"] = history[-1]["target_acc"]
        if reached:
            figures["time_to_0.7666_s"] = reached["time_s"]
            figures["time_to_0.7666_step"] = reached["step"]
            print(f"DANN reached {reached['target_acc']:.4f} >= {PAPER_DANN} on MNIST-M test at "
                  f"step {reached['step']}, {reached['time_s']:.0f} s into training "
                  f"(evaluating every 500 steps; whole run {total:.0f} s, final "
                  f"{history[-1]['target_acc']:.4f})")
        else:
            print(f"DANN did not reach {PAPER_DANN} (final {history[-1]['target_acc']:.4f})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
