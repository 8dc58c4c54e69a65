"""Speed of the image-folder data path at 224 px, against torchvision's ImageFolder+DataLoader.

    python scripts/bench.py --data folders                 # a generated Office-like folder
    python scripts/bench.py --data folders --folder /data/office31/amazon/images --json out.json

(`python scripts/bench_folders.py ...` is the same.)

Measures images per second of
  (a) our data path alone: index the uint8 store, copy the batch, random resized crop + flip
      (data/augment.py), convert and normalise (`as_input`); with the store loaded in memory
      and memory-mapped (the file is in the page cache: it was just written or read);
  (b) torchvision's `ImageFolder` + `DataLoader` (`--workers` processes) with the same
      augmentation: decode the file, resize to 256x256, RandomResizedCrop(224), flip, ToTensor,
      Normalize (the Transfer-Learning-Library's training transform);
  (c) end to end: a ResNet-18 (random weights) cross-entropy SGD step at 224 px fed by (a) and
      by (b);
and, once, how fast the cache is built (decode + resize to 256, threads). Each figure is given
per second of wall time and per second of CPU time (this process plus the DataLoader's
workers): on a shared machine the latter is the steadier measure. Without --folder the
images are generated: `--images` JPEGs of 300x300 (Office-31's amazon images' size) in 31
classes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms
from torchvision.io import write_jpeg

from transferlab.data.augment import Augment
from transferlab.data.domain import BatchStream, DataContext, as_input
from transferlab.data.folders import load_listing, scan
from transferlab.data.storage import StorageOptions
from transferlab.nn.backbones import IMAGENET, resnet


def make_folder(root: Path, images: int, classes: int = 31, side: int = 300) -> Path:
    """Smooth random colour fields with noise, as JPEGs (quality 90), in class folders."""
    g = torch.Generator().manual_seed(0)
    for i in range(images):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = torch.rand(1, 3, 6, 6, generator=g) * 255
        image = F.interpolate(coarse, size=(side, side), mode="bicubic", align_corners=False)
        image = image[0] + 20 * torch.randn(3, side, side, generator=g)
        write_jpeg(image.clamp(0, 255).to(torch.uint8), str(folder / f"{i:05d}.jpg"), quality=90)
    return root


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) used so far by this process and the processes `pids`."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def rate(step: Callable[[], None], steps: int, per_step: int, warmup: int = 2,
         workers: Callable[[], list[int]] = list) -> dict[str, float]:
    """Images per second of wall time, and per second of CPU time (of this process and the
    `workers` processes): on a shared machine the second is the steadier measure of cost."""
    for _ in range(warmup):
        step()
    wall, cpu = time.perf_counter(), cpu_seconds(workers())
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - wall, cpu_seconds(workers()) - cpu
    return {"img_s": round(steps * per_step / wall, 1),
            "img_per_cpu_s": round(steps * per_step / cpu, 1)}


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="a folder of class folders (default: made)")
    parser.add_argument("--images", type=int, default=620)
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--steps", type=int, default=30, help="batches per data-path figure")
    parser.add_argument("--model-steps", type=int, default=4, help="steps per end-to-end figure")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of this process")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or make_folder(Path(tmp) / "images", args.images)
        listing = scan(folder, "--folder")
        context = DataContext(Path(tmp), download=False, cache_dir=Path(tmp) / "cache")
        augment = Augment(size=224)
        figures: dict[str, object] = {
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "images": len(listing.train), "batch": args.batch,
            "load_average": os.getloadavg()[0]}

        start = time.perf_counter()
        load_listing(context, listing, StorageOptions(size=256, in_memory=False))
        figures["cache_build_img_s"] = round(len(listing.train) / (time.perf_counter() - start))

        streams = {}
        for kind, in_memory in (("in_memory", True), ("mapped", False)):
            domain = load_listing(context, listing, StorageOptions(size=256, in_memory=in_memory))
            stream = BatchStream(domain.train, args.batch, seed=0, augment=augment)
            streams[kind] = stream

            def ours(s: BatchStream = stream) -> torch.Tensor:
                return as_input(s.next()[0], 3, IMAGENET)

            figures[f"a_ours_{kind}"] = rate(ours, args.steps, args.batch)

        tv_transform = transforms.Compose([
            transforms.Resize((256, 256)), transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(*IMAGENET)])
        loader = DataLoader(datasets.ImageFolder(str(folder), transform=tv_transform),
                            batch_size=args.batch, shuffle=True, num_workers=args.workers,
                            drop_last=True, persistent_workers=args.workers > 0)
        batches = endless(loader)

        def worker_pids() -> list[int]:
            return [w.pid for w in loader._iterator._workers] if args.workers else []

        figures["b_dataloader"] = rate(lambda: next(batches), args.steps, args.batch,
                                       workers=worker_pids)
        figures["a_over_b"] = round(figures["a_ours_in_memory"]["img_s"]
                                    / figures["b_dataloader"]["img_s"], 2)
        figures["a_mapped_over_b"] = round(figures["a_ours_mapped"]["img_s"]
                                           / figures["b_dataloader"]["img_s"], 2)

        torch.manual_seed(0)
        model = resnet(3, len(listing.classes), arch="resnet18").to(
            memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def train_step(x: torch.Tensor, y: torch.Tensor) -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        def ours_step() -> None:
            x, y = streams["in_memory"].next()
            train_step(as_input(x, 3, IMAGENET), y)

        def loader_step() -> None:
            x, y = next(batches)
            train_step(x.contiguous(memory_format=torch.channels_last), y)

        figures["c_resnet18_ours"] = rate(ours_step, args.model_steps, args.batch, warmup=1)
        figures["c_resnet18_dataloader"] = rate(loader_step, args.model_steps, args.batch,
                                                warmup=1, workers=worker_pids)

    for key, value in figures.items():
        print(f"{key:24} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
