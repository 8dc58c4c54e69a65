"""Faults a cluster user meets, tried as written, each on the real command line:

    python tests/chaos.py            # prints each case and "N of M cases held"

A case holds when the command ends with one line on stderr, a non-zero exit, nothing lost (the
run's record and last checkpoint as they were, no temporary file left), and, where the cause
can go away, a rerun that resumes exactly once it has. A full disk and read-only folders are
real filesystems (a small tmpfs, remounted read-only) where this process may mount one (root
on Linux); elsewhere the disk fills by an injected ENOSPC and the read-only cases are skipped.
`tests/test_chaos.py` runs it (slow).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TRANSFERLAB_DEBUG": ""}
ENV.pop("TRANSFERLAB_DATA", None)
RUN = ["data=tiny", "device=cpu", "method=dann", "trainer.steps=300", "trainer.eval_every=50",
       "trainer.checkpoint_every=20", "trainer.progress_bar=false", "trainer.num_threads=1"]


def command(*args: str, module: str = "transferlab", cwd: Path,
            env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=600)


def one_line(result: subprocess.CompletedProcess) -> bool:
    lines = [x for x in result.stderr.strip().splitlines() if x]
    return result.returncode not in (0, 1) and len(lines) == 1 and lines[0].startswith("error:")


def metrics(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())["metrics"]


@contextmanager
def tmpfs(size: str) -> Path | None:
    """A small tmpfs, or None where this process may not mount one."""
    folder = Path(tempfile.mkdtemp(prefix="chaos-fs-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def remount(folder: Path, options: str) -> bool:
    return subprocess.run(["mount", "-o", f"remount,{options}", str(folder)],
                          capture_output=True).returncode == 0


def full_disk(work: Path, reference: Path) -> str:
    with tmpfs("3m") as disk:
        if disk is None:
            return "skipped: cannot mount a tmpfs here (tests/test_reliability.py injects ENOSPC)"
        run = disk / "run"
        full = command(*RUN, f"hydra.run.dir={run}", cwd=work)
        record = json.loads((run / "results.json").read_text())
        left = [p.name for p in run.rglob("*.tmp*")]
        if not (one_line(full) and "out of space in" in full.stderr and not left
                and record["status"] == "failed" and "out of space" in record["error"]):
            return f"FAILED: exit {full.returncode}, {full.stderr.strip()[-300:]!r}, {left}"
        if not remount(disk, "size=40m"):
            return "FAILED: could not make room"
        again = command(*RUN, f"hydra.run.dir={run}", cwd=work)
        if again.returncode or metrics(run) != metrics(reference):
            return f"FAILED: the rerun with room did not resume exactly ({again.stderr[-200:]})"
        return "held"


def read_only(work: Path, reference: Path, name: str, args: list[str]) -> str:
    with tmpfs("40m") as disk:
        if disk is None:
            return "skipped: cannot mount a read-only filesystem here"
        run = disk / "run"
        shutil.copytree(reference, run, ignore=shutil.ignore_patterns("run.lock"))
        if not remount(disk, "ro"):
            return "skipped: cannot remount read-only"
        result = command(*[str(run) if a == "RUN" else a for a in args],
                         module=f"transferlab.{name}", cwd=work)
        remount(disk, "rw")
        held = one_line(result) and "--out" in result.stderr and "Traceback" not in result.stderr
        return "held" if held else f"FAILED: exit {result.returncode}, {result.stderr[-300:]!r}"


def live(work: Path, reference: Path, name: str, args: list[str]) -> str:
    run = work / f"live-{name}"
    shutil.copytree(reference, run)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from transferlab.files import FileLock; "
        "lock = FileLock(Path(sys.argv[1]) / 'run.lock'); lock.acquire(wait=False); print('held', "
        "flush=True); time.sleep(600)"), str(run)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        holder.stdout.readline()  # the lock is held
        refused = command(*[str(run) if a == "RUN" else a for a in args],
                          module=f"transferlab.{name}", cwd=work)
        allowed = command(*[str(run) if a == "RUN" else a for a in args], "--allow-live",
                          module=f"transferlab.{name}", cwd=work)
    finally:
        holder.kill()
    if not (one_line(refused) and "is still training" in refused.stderr):
        return f"FAILED: {refused.stderr[-300:]!r}"
    if allowed.returncode or "using it (--allow-live)" not in allowed.stdout + allowed.stderr:
        return f"FAILED with --allow-live: {allowed.stderr[-300:]!r}"
    return "held"


def one_class(work: Path, reference: Path) -> str:
    from PIL import Image

    for domain in ("a", "b"):
        folder = work / domain / "cat"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(folder / f"{i}.png")
    result = command("data=folders", f"data.source.path={work / 'a'}",
                     f"data.target.path={work / 'b'}", f"data.cache_dir={work / 'cache'}",
                     "trainer.steps=2", f"hydra.run.dir={work / 'one-class'}", cwd=work)
    return "held" if one_line(result) and "holds one class" in result.stderr else \
        f"FAILED: {result.stderr[-300:]!r}"


def broken_torch(work: Path, reference: Path) -> str:
    fake = work / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = {**ENV, "PYTHONPATH": f"{work / 'site'}:{ROOT / 'src'}"}
    result = command(*RUN, "backbone=resnet18", f"hydra.run.dir={work / 'broken'}", cwd=work,
                     env=env)  # the ResNet backbone imports torchvision's models
    held = one_line(result) and "pip install --force-reinstall torch==" in result.stderr
    return "held" if held else f"FAILED: {result.stderr[-300:]!r}"


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="chaos-"))
    reference = work / "reference"
    made = command(*RUN, f"hydra.run.dir={reference}", cwd=work)
    if made.returncode:
        print(made.stderr)
        return 1
    for lock in reference.rglob("run.lock"):
        lock.unlink()
    cases: dict[str, Callable[[], str]] = {
        "disk fills mid-run": lambda: full_disk(work, reference),
        **{f"{name} on a read-only run folder": (
            lambda name=name, args=args: read_only(work, reference, name, args))
           for name, args in (("evaluate", ["RUN"]), ("analyze", ["RUN", "--samples", "20"]),
                              ("summarize", ["RUN", "--no-plot"]),
                              ("select", ["RUN", "--by", "bnm", "--no-plot"]))},
        **{f"{name} on a run still training": (
            lambda name=name, args=args: live(work, reference, name, args))
           for name, args in (("analyze", ["RUN", "--samples", "20", "--out", str(work / "o1")]),
                              ("evaluate", ["RUN", "--out", str(work / "o2")]))},
        "data=folders with a single class": lambda: one_class(work, reference),
        "a torchvision that does not match torch": lambda: broken_torch(work, reference),
    }
    results = {}
    for name, case in cases.items():
        results[name] = case()
        print(f"{results[name].split(':')[0]:<8} {name}" + (
            f": {results[name]}" if results[name] != "held" else ""), flush=True)
    held = sum(r == "held" for r in results.values())
    tried = sum(not r.startswith("skipped") for r in results.values())
    print(f"{held} of {len(results)} cases held ({len(results) - tried} skipped)")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if held == tried else 1


if __name__ == "__main__":
    sys.exit(main())
