"""Which t-SNE `transferlab.analyze` should use: scikit-learn's TSNE or openTSNE, on points like
the analysis's (2 x 2,000 feature vectors of the DANN MNIST encoder's 768 dimensions, in 20
clusters), after the same PCA to 50 dimensions, each with its default iterations.

    python scripts/bench_tsne.py [--points 4000] [--dims 768]

Prints wall-clock and CPU seconds; on a shared machine the CPU seconds are the fairer number.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np


def timed(name: str, fit: Callable[[], object]) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    print(f"{name:<28} wall {time.perf_counter() - wall:7.1f} s   "
          f"cpu {time.process_time() - cpu:7.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=4000)
    parser.add_argument("--dims", type=int, default=768)
    args = parser.parse_args()

    import openTSNE
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, args.dims)) * 3
    x = centres[rng.integers(0, 20, args.points)] + rng.normal(size=(args.points, args.dims))
    x = PCA(50, random_state=0).fit_transform(x)
    timed("scikit-learn TSNE, 1 job", lambda: TSNE(init="pca", random_state=0,
                                                    n_jobs=1).fit_transform(x))
    for jobs in (1, 2):
        timed(f"openTSNE, {jobs} thread(s)",
              lambda jobs=jobs: openTSNE.TSNE(random_state=0, n_jobs=jobs).fit(x))


if __name__ == "__main__":
    main()
