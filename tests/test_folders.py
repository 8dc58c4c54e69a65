"""Image-folder domains: layouts, class matching, channels, the cache, the benchmark configs,
and memory-mapped stores that behave exactly as loaded ones without being loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision.io import ImageReadMode, decode_image, write_png

from conftest import ROOT, make_image_folder
from helpers import compose_config, run_in_process
from transferlab import train
from transferlab.data import storage
from transferlab.data.augment import resize
from transferlab.data.domain import BatchStream, DataContext, Split
from transferlab.data.folders import folder_pair, load_listing, scan
from transferlab.data.storage import StorageOptions, image_store
from transferlab.errors import DataError, UserError, find_user_error

CLASSES = ("cat", "dog", "owl")


def ctx(tmp_path: Path) -> DataContext:
    return DataContext(tmp_path, download=False, cache_dir=tmp_path / "cache")


def decoded(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    return resize(decode_image(str(path), mode=mode)[None], size)[0]


def build_data(*overrides: str):
    """The pair a config describes; a user error as itself, not wrapped by Hydra."""
    try:
        return instantiate(compose_config(*overrides).data)
    except Exception as e:
        error = find_user_error(e)
        if error is None:
            raise
        raise error from None


def folder_overrides(source: Path, target: Path, cache: Path, *more: str) -> list[str]:
    return ["data=folders", f"data.source.path={source}", f"data.target.path={target}",
            f"data.cache_dir={cache}", "data.storage_size=24", "data.augment.size=16", *more]


def test_a_pool_is_split_per_class_with_the_seed_and_labels_follow_sorted_names(
        tmp_path: Path):
    make_image_folder(tmp_path / "a", classes=("owl", "cat", "dog"), per_class=10)
    listing = scan(tmp_path / "a", "data.source")
    assert listing.layout == "pool" and listing.classes == CLASSES
    domain = load_listing(ctx(tmp_path), listing, StorageOptions(size=24), test_fraction=0.2,
                          split_seed=0)
    assert domain.num_classes == 3 and not domain.transductive
    assert torch.bincount(domain.test.labels).tolist() == [2, 2, 2]
    assert torch.bincount(domain.train.labels).tolist() == [8, 8, 8]
    assert not set(domain.train.rows.tolist()) & set(domain.test.rows.tolist())
    # Row r of the store is file r of the listing, decoded and resized; its label is its folder.
    files = [f for f, _ in listing.train]
    for row, label in zip(domain.test.rows.tolist(), domain.test.labels.tolist(), strict=True):
        assert torch.equal(domain.test.store[row], decoded(files[row], 24))
        assert files[row].parent.name == CLASSES[label]
    again = load_listing(ctx(tmp_path), listing, StorageOptions(size=24), split_seed=0)
    other = load_listing(ctx(tmp_path), listing, StorageOptions(size=24), split_seed=1)
    assert torch.equal(again.test.rows, domain.test.rows)
    assert not torch.equal(other.test.rows, domain.test.rows)


def test_a_split_folder_uses_its_own_train_and_test_images(tmp_path: Path):
    make_image_folder(tmp_path / "b", per_class=6, split=True)
    listing = scan(tmp_path / "b", "data.target")
    assert listing.layout == "split"
    domain = load_listing(ctx(tmp_path), listing, StorageOptions(size=24))
    assert (len(domain.train), len(domain.test)) == (12, 6)
    test_files = sorted((tmp_path / "b" / "test").rglob("*.*"))
    assert {tuple(decoded(f, 24).flatten().tolist()) for f in test_files} == {
        tuple(image.flatten().tolist()) for image in domain.test.images}


def test_a_transductive_target_trains_on_all_its_images_and_is_tested_on_all(tmp_path: Path):
    make_image_folder(tmp_path / "a", per_class=10)
    make_image_folder(tmp_path / "b", per_class=10, seed=1)
    pair = folder_pair({"path": tmp_path / "a", "test": "all"},
                       {"path": tmp_path / "b", "test": "all"}, tmp_path,
                       cache_dir=tmp_path / "cache", source_val_size=3, target_val_size=4,
                       storage_size=24)
    assert len(pair.target.test) == len(pair.target.train) == 30
    assert set(pair.target_val.rows.tolist()) <= set(pair.target.train.rows.tolist())
    # Source validation images keep their labels: they leave source training.
    assert len(pair.source.train) == 27
    assert not set(pair.source_val.rows.tolist()) & set(pair.source.train.rows.tolist())


def test_mismatched_classes_stop_with_one_line_naming_them(tmp_path: Path):
    make_image_folder(tmp_path / "a")
    make_image_folder(tmp_path / "b", classes=("cat", "dog", "emu"))
    with pytest.raises(UserError) as error:
        build_data(*folder_overrides(tmp_path / "a", tmp_path / "b", tmp_path / "cache"))
    message = str(error.value)
    assert "\n" not in message
    assert f"missing in target ({tmp_path / 'b'}): owl" in message
    assert f"extra in target ({tmp_path / 'b'}): emu" in message
    assert not (tmp_path / "cache").exists()  # stopped before decoding anything


def test_train_and_test_of_a_split_folder_must_have_the_same_classes(tmp_path: Path):
    make_image_folder(tmp_path / "b", split=True)
    (tmp_path / "b" / "test" / "owl").rename(tmp_path / "b" / "test" / "emu")
    with pytest.raises(DataError, match=r"missing in .*test: owl; extra in .*test: emu"):
        scan(tmp_path / "b", "data.target")


def test_grey_domains_stay_grey_and_mixed_ones_become_rgb(tmp_path: Path):
    grey = make_image_folder(tmp_path / "grey", grey=True)
    mixed = make_image_folder(tmp_path / "mixed")
    odd = next((mixed / "cat").glob("*.png"))
    write_png(decode_image(str(odd))[:1], str(odd))  # one grey PNG among colour images
    options = StorageOptions(size=24)
    grey_domain = load_listing(ctx(tmp_path), scan(grey, "s"), options)
    assert grey_domain.train.channels == 1
    mixed_listing = scan(mixed, "t")
    mixed_domain = load_listing(ctx(tmp_path), mixed_listing, options)
    assert mixed_domain.train.channels == 3
    row = [f for f, _ in mixed_listing.train].index(odd)
    stored = mixed_domain.train.store[row]
    assert torch.equal(stored[0], stored[1]) and torch.equal(stored[1], stored[2])
    assert torch.equal(stored[:1], decoded(odd, 24, channels=1))


def test_files_torchvision_cannot_decode_are_skipped_with_a_note(tmp_path: Path, caplog):
    folder = make_image_folder(tmp_path / "a")
    (folder / "cat" / "notes.txt").write_text("not an image")
    (folder / "cat" / ".DS_Store").write_text("")
    listing = scan(folder, "data.source")
    assert all(f.suffix in (".png", ".jpg") for f, _ in listing.train)
    assert "skipped 1 files" in caplog.text


def test_a_damaged_cache_is_named_and_rebuilt(tmp_path: Path, caplog):
    files = [f for f, _ in scan(make_image_folder(tmp_path / "a", size=(384, 384)), "s").train]
    cache = tmp_path / "cache"
    # 18 images at 384 px: 8 MB, so that the blocks the quick check samples leave gaps.
    options = StorageOptions(size=384, in_memory=True)
    good, mapped = image_store(files, "a", cache, options)
    assert not mapped
    (path,) = (cache / "folders").glob("*.u8")
    step = (path.stat().st_size - storage.BLOCK) // (storage.SAMPLED_BLOCKS - 1)
    gap = (storage.BLOCK + step) // 2  # after the first sampled block, before the second
    assert storage.BLOCK < gap < step
    for offset in (step + 10, gap):
        data = bytearray(path.read_bytes())
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        again, _ = image_store(files, "a", cache, options)
        assert f"image cache {path} is damaged" in caplog.text, offset
        caplog.clear()
        assert torch.equal(again, good)
    with open(path, "r+b") as f:  # truncated: found by the size check before mapping
        f.truncate(100)
    mapped_again, mapped = image_store(files, "a", cache,
                                       StorageOptions(size=384, in_memory=False))
    assert mapped and f"image cache {path} is damaged" in caplog.text
    assert torch.equal(mapped_again, good)


def test_a_valid_cache_is_used_without_decoding(tmp_path: Path, monkeypatch):
    files = [f for f, _ in scan(make_image_folder(tmp_path / "a"), "s").train]
    first, _ = image_store(files, "a", tmp_path / "cache", StorageOptions(size=24))

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(storage, "decode", no_decoding)
    second, _ = image_store(files, "a", tmp_path / "cache", StorageOptions(size=24))
    assert torch.equal(first, second)
    os.utime(files[0], ns=(0, 0))  # a changed file is a new fingerprint: decoded again
    with pytest.raises(AssertionError, match="decoded although"):
        image_store(files, "a", tmp_path / "cache", StorageOptions(size=24))


def test_every_undecodable_file_is_named_in_one_pass(tmp_path: Path):
    folder = make_image_folder(tmp_path / "a")
    (folder / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "owl" / "empty.png").write_bytes(b"")
    files = [f for f, _ in scan(folder, "s").train]
    with pytest.raises(DataError) as raised:
        image_store(files, "a", tmp_path / "cache", StorageOptions(size=24), channels=3)
    message = str(raised.value)
    assert message.startswith(f"cannot decode 2 of {len(files)} files of a: ")
    assert "broken.jpg" in message and "empty.png" in message
    assert not list((tmp_path / "cache").rglob("*.tmp*"))  # nothing half-made is left


def test_a_folder_of_one_class_is_refused(tmp_path: Path):
    make_image_folder(tmp_path / "a", classes=("cat",))
    with pytest.raises(DataError, match=r"holds one class \(cat\): classification needs at "
                                        "least two"):
        scan(tmp_path / "a", "data.source")


def test_a_split_that_leaves_a_class_without_test_images_is_refused(tmp_path: Path):
    make_image_folder(tmp_path / "a", per_class=2)
    listing = scan(tmp_path / "a", "data.source")
    with pytest.raises(UserError, match=r"data\.test_fraction=0\.2 leaves no test image of "
                                        r"class \w+ in .* \(2 images\)"):
        load_listing(ctx(tmp_path), listing, StorageOptions(size=24), test_fraction=0.2)


def test_mapped_and_in_memory_stores_give_identical_batches_and_metrics(tmp_path: Path):
    make_image_folder(tmp_path / "a", per_class=8)
    make_image_folder(tmp_path / "b", per_class=8, seed=1, split=True)
    overrides = [*folder_overrides(tmp_path / "a", tmp_path / "b", tmp_path / "cache"),
                 "backbone=resnet18", "method=dann", "trainer.steps=4", "trainer.batch_size=4",
                 "trainer.eval_every=2", "trainer.eval_batch_size=5", "trainer.num_threads=1"]
    pairs = {}
    for in_memory in ("true", "false"):
        cfg = compose_config(*overrides, f"data.in_memory={in_memory}")
        pairs[in_memory] = instantiate(cfg.data)
    loaded, mapped = pairs["true"], pairs["false"]
    assert not loaded.source.train.mapped and mapped.source.train.mapped
    streams = [BatchStream(p.source.train, 4, seed=0, augment=p.augment) for p in pairs.values()]
    for _ in range(5):
        (x1, y1), (x2, y2) = (s.next() for s in streams)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)

    records = {m: run_in_process(tmp_path / m, *overrides, f"data.in_memory={m}")
               for m in ("true", "false")}
    assert records["true"]["history"][-1]["step"] == 4
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in records["true"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "time_s"}
                     for h in records["false"]["history"]]


class Stop(Exception):
    pass


def test_an_augmented_run_resumes_exactly(tmp_path: Path, monkeypatch):
    """Killed after step 3 (last checkpoint: step 2), the rerun continues from the augmentation
    generators' checkpointed states and ends with the uninterrupted run's metrics."""
    make_image_folder(tmp_path / "a", per_class=8)
    make_image_folder(tmp_path / "b", per_class=8, seed=1)
    overrides = [*folder_overrides(tmp_path / "a", tmp_path / "b", tmp_path / "cache"),
                 "data.storage_size=32", "data.augment.size=28", "data.augment.color_jitter=0.3",
                 "method=dann", "trainer.steps=6", "trainer.batch_size=4", "trainer.eval_every=3",
                 "trainer.checkpoint_every=2", "trainer.num_threads=1"]
    full = run_in_process(tmp_path / "full", *overrides)
    update = train.FiniteCheck.update

    def stop_after_step_3(self, scalars, step):
        update(self, scalars, step)
        if step == 3:
            raise Stop

    monkeypatch.setattr(train.FiniteCheck, "update", stop_after_step_3)
    with pytest.raises(Stop):
        run_in_process(tmp_path / "cut", *overrides)
    monkeypatch.setattr(train.FiniteCheck, "update", update)
    resumed = run_in_process(tmp_path / "cut", *overrides)
    assert resumed["metrics"] == full["metrics"]
    assert [h["step"] for h in resumed["history"]] == [3, 6]
    # The trained weights, not only the (coarse) accuracies on a few images, are the same.
    weights = [torch.load(tmp_path / run / "checkpoints" / "last.pt",
                          weights_only=True)["method"] for run in ("full", "cut")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


LIMITED_RUN = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from helpers import compose_config
    from transferlab.experiment import run
    # What every run imports (torch.optim and deterministic mode load torch._dynamo), before the
    # limit is measured: the limit is on the data path, not on module code.
    import torch._dynamo
    import torch.utils.tensorboard

    cfg = compose_config(*sys.argv[4:])
    Path(sys.argv[2]).mkdir()
    used = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
                if line.startswith("VmData:"))
    resource.setrlimit(resource.RLIMIT_DATA, (used + int(sys.argv[3]), resource.RLIM_INFINITY))
    try:
        run(cfg, Path(sys.argv[2]), {"data": "folders", "backbone": "dann_mnist",
                                     "method": "source_only"})
    except Exception as e:  # Hydra wraps the allocator's error into its own
        print("failed:", " ".join(str(e).split()))
        sys.exit(3)
    """)


def test_a_cache_larger_than_the_memory_cap_is_mapped_not_loaded(tmp_path: Path):
    """Under RLIMIT_DATA (which counts the process's own memory, not mapped file pages) with
    room for about half a domain's cache, a memory-mapped run trains and evaluates while one
    that loads the cache runs out of memory."""
    size = 256  # flat images: small files, full-size stores
    make_image_folder(tmp_path / "a", per_class=200, size=(size, size), noise=0)
    make_image_folder(tmp_path / "b", per_class=200, size=(size, size), seed=1, noise=0)
    overrides = [*folder_overrides(tmp_path / "a", tmp_path / "b", tmp_path / "cache"),
                 f"data.storage_size={size}", "data.augment.size=28",
                 "data.augment.photo_size=8", "backbone=dann_mnist",
                 "device=cpu", "trainer.steps=3", "trainer.batch_size=4",
                 "trainer.eval_batch_size=16", "trainer.num_threads=1",
                 "trainer.progress_bar=false", "data.in_memory_max_mb=1"]
    instantiate(compose_config(*overrides).data)  # build both caches beforehand, unlimited
    cache_bytes = 600 * 3 * size * size  # 113 MiB per domain
    assert all(p.stat().st_size == cache_bytes for p in (tmp_path / "cache").rglob("*.u8"))
    room = 90 * 2**20  # the mapped run needs about 30 MiB, and 8 MiB per thread stack
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def limited(out: str, *more: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", LIMITED_RUN, str(ROOT / "tests"),
                               str(tmp_path / out), str(room), *overrides, *more],
                              env=env, capture_output=True, text=True, timeout=300)

    mapped = limited("mapped")  # data.in_memory=auto with a 1 MB cap: mapped
    assert mapped.returncode == 0, mapped.stdout + mapped.stderr
    record = json.loads((tmp_path / "mapped" / "results.json").read_text())
    assert record["status"] == "completed" and record["steps"] == 3
    loaded = limited("loaded", "data.in_memory=true")
    assert loaded.returncode == 3, loaded.stdout + loaded.stderr
    assert "can't allocate memory" in loaded.stdout


def write_office31(root: Path) -> Path:
    for domain, seed in (("amazon", 0), ("dslr", 1), ("webcam", 2)):
        make_image_folder(root / "office31" / domain / "images", per_class=4, seed=seed)
    return root


def test_office31_tasks_pick_their_domains_under_the_published_layout(tmp_path: Path):
    root = write_office31(tmp_path / "data")
    cfg = compose_config("data=office31", "backbone=resnet50", "data.task=D2W",
                         f"data.root={root}",
                         f"data.cache_dir={tmp_path / 'cache'}", "data.storage_size=24",
                         "data.source_val_size=2", "data.target_val_size=2")
    pair = instantiate(cfg.data)
    assert (pair.source.name, pair.target.name) == ("dslr", "webcam")
    assert pair.target.transductive and len(pair.target.test) == len(pair.target.train) == 12
    assert pair.augment.size == 224 and pair.image_size == 224
    with pytest.raises(UserError, match=r"data.task=D2X is not a task of Office-31; valid: "
                                        r"A2D, A2W, D2A, D2W, W2A, W2D"):
        build_data("data=office31", "data.task=D2X")


def test_domainnet_reads_its_train_and_test_lists(tmp_path: Path):
    root = tmp_path / "domainnet"
    for domain, seed in (("clipart", 0), ("painting", 1)):
        make_image_folder(root / domain, per_class=4, seed=seed)
        files = sorted((root / domain).rglob("*.*"))
        for part, chosen in (("train", files[1:]), ("test", files[:1] + files[4::4])):
            lines = [f"{f.relative_to(root)} {CLASSES.index(f.parent.name)}" for f in chosen]
            (root / f"{domain}_{part}.txt").write_text("\n".join(lines) + "\n")
    cfg = compose_config("data=domainnet", "data.task=c2p", f"data.root={tmp_path}",
                         f"data.cache_dir={tmp_path / 'cache'}", "data.storage_size=24",
                         "data.source_val_size=2", "data.target_val_size=2")
    pair = instantiate(cfg.data)
    assert (pair.source.name, pair.target.name) == ("clipart", "painting")
    assert len(pair.target.test) == 3 and len(pair.target.train) == 11 - 2
    assert not pair.target.transductive


def test_folder_settings_are_checked(tmp_path: Path):
    make_image_folder(tmp_path / "a")
    with pytest.raises(UserError, match=r"data.source.path is not set"):
        build_data("data=folders")
    for override, message in (("data.target.test=some", "data.target.test=some is invalid"),
                              ("+data.source.colour=1", "data.source.colour is not a setting"),
                              ("data.source.channels=2", "data.source.channels=2 is invalid"),
                              ("data.in_memory=maybe", "data.in_memory=maybe is invalid"),
                              ("data.storage_fit=squash", "data.storage_fit=squash is invalid")):
        with pytest.raises(UserError, match=message):
            build_data(*folder_overrides(tmp_path / "a", tmp_path / "a", tmp_path / "cache",
                                         override))


def test_digit_folders_hold_exactly_the_digits(tmp_path: Path):
    """scripts/make_digit_folders.py's writer on the tiny pair: read back through the folder
    path at 28 px without augmentation, every split holds the same images and labels."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_digit_folders import write_split

    tiny = instantiate(compose_config("data=tiny", "data.source_val_size=0",
                                      "data.target_val_size=0").data)
    for name, domain in (("grey", tiny.source), ("colour", tiny.target)):
        for part in ("train", "test"):
            write_split(getattr(domain, part), tmp_path / name / part)
    pair = instantiate(compose_config(
        *folder_overrides(tmp_path / "grey", tmp_path / "colour", tmp_path / "cache"),
        "data.storage_size=28", "data.augment=null", "data.source_val_size=0",
        "data.target_val_size=0").data)
    assert pair.augment is None and pair.image_size == 28 and pair.channels == 3
    for ours, theirs in ((pair.source, tiny.source), (pair.target, tiny.target)):
        for part in ("train", "test"):
            a, b = getattr(ours, part), getattr(theirs, part)
            assert a.channels == b.channels and contents(a) == contents(b)


def contents(split) -> list[tuple[int, tuple[int, ...]]]:
    """The split's (label, pixels) pairs, in a fixed order."""
    return sorted((int(y), tuple(x.flatten().tolist()))
                  for x, y in zip(split.images, split.labels, strict=True))


def test_evaluation_batches_are_center_crops_of_the_stored_images(tmp_path: Path):
    make_image_folder(tmp_path / "a")
    make_image_folder(tmp_path / "b", seed=1)
    pair = build_data(*folder_overrides(tmp_path / "a", tmp_path / "b", tmp_path / "cache"),
                      "data.augment.size=21", "data.augment.photo_size=8",
                      "data.source_val_size=0", "data.target_val_size=0")
    split = pair.target.test
    (batch,) = pair.evaluation_batches(split, batch_size=100)
    assert torch.equal(batch, split.images[:, :, 2:23, 2:23])  # (24 - 21) / 2 rounds to 2
    first, second = pair.evaluation_batches(split, batch_size=len(split) - 1)
    assert torch.equal(torch.cat([first, second]), batch)


def test_resizing_a_store_chunk_by_chunk_equals_resizing_it_whole():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8, generator=g),
                  torch.arange(7))
    whole = torch.nn.functional.interpolate(split.store.float(), size=(28, 28), mode="bilinear",
                                            antialias=True, align_corners=False)
    resized = split.subset(torch.tensor([5, 1])).resized(28, chunk=3)
    assert torch.equal(resized.store, whole.round().clamp(0, 255).to(torch.uint8))
    assert resized.rows.tolist() == [5, 1]
