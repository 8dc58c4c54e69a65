"""Write MNIST and MNIST-M as folders of PNG images, to check the folder pipeline against the
in-memory digit loaders (README, "Bring your own domains"):

    python scripts/make_digit_folders.py /tmp/digits --data-root ../shared/data
    python -m transferlab method=dann data=folders data.source.path=/tmp/digits/mnist \
        data.target.path=/tmp/digits/mnistm data.storage_size=28 data.augment=null \
        data.source_val_size=5000 data.target_val_size=1000

Layout: <out>/mnist/{train,test}/<digit>/<index>.png (grey) and the same for mnistm (RGB),
where <index> is the image's position in the original split. MNIST-M is made (or read from
its cache) exactly as `data=mnist_mnistm` makes it, with the recipe seed given here.
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from torchvision.io import write_png

from transferlab.data.domain import DataContext, Split, default_cache_dir
from transferlab.data.mnist import load_mnist
from transferlab.data.mnistm import load_mnistm


def write_split(split: Split, folder: Path) -> None:
    for digit in range(10):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
    images, labels = split.images, split.labels.tolist()

    def write(i: int) -> None:
        write_png(images[i], str(folder / str(labels[i]) / f"{i:05d}.png"))

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(len(labels)), chunksize=256))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write mnist/ and mnistm/ into")
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("TRANSFERLAB_DATA", "./data")))
    parser.add_argument("--cache-dir", type=Path, help="MNIST-M's cache (default as the runner)")
    parser.add_argument("--mnistm-seed", type=int, default=0,
                        help="the recipe's seed (data.target.seed)")
    args = parser.parse_args()
    root = args.data_root.expanduser()
    ctx = DataContext(root, download=False, cache_dir=args.cache_dir or default_cache_dir(root))
    for name, domain in (("mnist", load_mnist(ctx)),
                         ("mnistm", load_mnistm(ctx, seed=args.mnistm_seed))):
        for part, split in (("train", domain.train), ("test", domain.test)):
            write_split(split, args.out / name / part)
            print(f"{args.out / name / part}: {len(split)} images")


if __name__ == "__main__":
    main()
