"""The GPU path, checked end to end in under ten minutes: `make gpu-check`.

    python scripts/gpu_check.py [--steps 300] [--data-root DIR] [--json docs/gpu_check.json]

Without CUDA it prints why it skipped and exits 0. With CUDA it runs, and summarises in one
table:
  1. every method in conf/method/ for `--steps` steps per stage, in bf16 and in fp32 training
     precision (evaluation is always fp32), on MNIST→MNIST-M when the data is under
     --data-root ($TRANSFERLAB_DATA), else on the generated tiny pair;
  2. a kill-and-resume: a DANN run SIGKILLed after its first checkpoint and rerun, against the
     same run uninterrupted (final metrics compared);
  3. trainer.compile: DANN eager, compiled, and compiled with CUDA graphs, timed;
  4. the speed benchmark, scripts/bench.py, on the GPU.
Each training run is a real `python -m transferlab` process, as a user runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


def has_real_data(root: Path) -> bool:
    return ((root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()
            and any((root / "BSR/BSDS500/data/images/train").glob("*.jpg")))


def transferlab(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "transferlab", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def record(run_dir: Path) -> dict:
    path = run_dir / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {"status": "no results.json"}


def train_one(common: list[str], method: str, precision: str, steps: int, out: Path) -> dict:
    run_dir = out / f"{method}-{precision}"
    start = time.perf_counter()
    result = transferlab(*common, f"method={method}", f"trainer.steps={steps}",
                         f"trainer.eval_every={steps}", f"trainer.precision={precision}",
                         f"hydra.run.dir={run_dir}")
    rec = record(run_dir)
    error = "" if result.returncode == 0 else (result.stderr.strip().splitlines() or ["?"])[-1]
    return {"check": f"{method} {precision}", "status": rec.get("status"),
            "target_acc": rec.get("metrics", {}).get("target_acc"),
            "seconds": round(time.perf_counter() - start, 1), "error": error}


def train_everything(common: list[str], steps: int, out: Path, jobs: int) -> list[dict]:
    """Several processes share the GPU at once: the runs are small, process start-up is not."""
    todo = [(m, p) for m in METHODS for p in ("bf16", "fp32")]
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda mp: train_one(common, *mp, steps, out), todo))


def kill_and_resume(common: list[str], steps: int, out: Path) -> dict:
    args = [*common, "method=dann", f"trainer.steps={steps}", f"trainer.eval_every={steps}",
            f"trainer.checkpoint_every={steps // 3}"]
    whole = out / "resume-whole"
    transferlab(*args, f"hydra.run.dir={whole}")
    cut = out / "resume-cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "transferlab", *args,
                             f"hydra.run.dir={cut}"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = cut / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = transferlab(*args, f"hydra.run.dir={cut}")
    a, b = record(whole).get("metrics", {}), record(cut).get("metrics", {})
    same = bool(a) and a == b
    close = bool(a) and bool(b) and all(abs(a[k] - b[k]) < 0.02 for k in a)
    return {"check": "kill and resume (dann)", "status": "identical" if same else (
                "close (<0.02)" if close else "differs"),
            "target_acc": b.get("target_acc"), "seconds": None,
            "error": "" if resumed.returncode == 0 else resumed.stderr.strip()[-200:]}


def benchmark(data_root: Path, device: str, out: Path) -> dict:
    path = out / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device",
                             device, "--data-root", str(data_root), "--skip-time-to-accuracy",
                             "--json", str(path)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    figures = json.loads(path.read_text()) if path.is_file() else {}
    return {"check": f"bench.py ({device})", "status": "ok" if result.returncode == 0 else "failed",
            "target_acc": None, "seconds": None,
            "error": "" if result.returncode == 0 else result.stderr.strip()[-200:],
            "figures": figures}


def compiled_steps(common: list[str], steps: int, out: Path) -> list[dict]:
    """DANN trained eager, compiled, and compiled with CUDA graphs (reduce-overhead): the
    seconds of each run (compilation included) and its target accuracy, which should agree."""
    rows = []
    for label, extra in (("dann eager", []), ("dann compiled", ["trainer.compile=true"]),
                         ("dann compiled, cudagraphs", ["trainer.compile=true",
                                                        "trainer.compile_mode=reduce-overhead"])):
        run_dir = out / label.replace(" ", "_").replace(",", "")
        start = time.time()
        result = transferlab(*common, "method=dann", f"trainer.steps={steps}",
                             f"trainer.eval_every={steps}", "trainer.precision=fp32", *extra,
                             f"hydra.run.dir={run_dir}", timeout=600)
        done = result.returncode == 0
        rows.append({"check": label, "status": "completed" if done else "failed",
                     "target_acc": record(run_dir)["metrics"]["target_acc"] if done else None,
                     "seconds": time.time() - start,
                     "error": "" if done else result.stderr.strip()[-200:]})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--data-root", type=Path,
                        default=Path(os.environ.get("TRANSFERLAB_DATA", "./data")))
    parser.add_argument("--jobs", type=int, default=4, help="training processes at once")
    parser.add_argument("--device", default="cuda",
                        help="cpu runs the same checks without a GPU, to try the script itself")
    parser.add_argument("--json", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check skipped: CUDA is not available on this machine")
        return 0
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    real = has_real_data(args.data_root)
    data = ["data=mnist_mnistm", f"data.root={args.data_root}"] if real else ["data=tiny"]
    threads = max((os.cpu_count() or 1) // args.jobs, 1)
    common = [*data, f"device={args.device}", "trainer.progress_bar=false",
              f"trainer.num_threads={threads}"]
    print(f"gpu-check on {name}, data: {data[0]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        rows = train_everything(common, args.steps, out, args.jobs)
        rows.append(kill_and_resume(common, 3 * max(args.steps // 3, 1), out))
        rows += compiled_steps(common, 10 * args.steps, out)
        rows.append(benchmark(args.data_root, args.device, out))
    print(f"\n{'check':<28}{'status':<16}{'target acc':>11}{'seconds':>9}  error")
    for row in rows:
        acc = "—" if row["target_acc"] is None else f"{row['target_acc']:.4f}"
        secs = "—" if row["seconds"] is None else f"{row['seconds']:.1f}"
        print(f"{row['check']:<28}{row['status']!s:<16}{acc:>11}{secs:>9}  {row['error']}")
    if args.json:
        args.json.write_text(json.dumps({"device": name,
                                         "data": data[0], "rows": rows}, indent=2) + "\n")
    bad = [r for r in rows if r["status"] not in ("completed", "identical", "close (<0.02)", "ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
