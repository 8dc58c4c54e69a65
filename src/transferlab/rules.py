"""The config schema: what each value may be (`Rule`, `SCHEMA`), and which keys say how a run
ran rather than what it trained (`OPERATIONAL_KEYS`). A leaf: it imports nothing of ours, so
methods (their `limits`), run folders and summaries can all depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transferlab.errors import UserError

# The two reports every run makes (each domain's test accuracy); everything else an evaluation
# measures is a validator chosen by config (conf/evaluation).
REPORTS = ("source_acc", "target_acc")
# Inputs larger than this are photos (stored larger, cropped and flipped at random, as for
# ImageNet); at or below it, digit-sized images (stored at their size, not augmented).
PHOTO_SIZE = 64

KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


@dataclass(frozen=True)
class Rule:
    """What one config value may be: its type, an optional range, optional choices."""

    kind: type
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False

    def allowed(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = KINDS[self.kind]
            if self.min is not None:
                text += f" >= {self.min}"
            if self.max is not None:
                text += f" <= {self.max}"
        return text + (" or null" if self.nullable else "")

    def check(self, key: str, value: Any) -> None:
        if value is None and self.nullable:
            return
        # bool is an int to Python, but `steps=true` is a mistake; ints are fine as floats.
        ok_type = isinstance(value, self.kind) and not (
            self.kind is not bool and isinstance(value, bool))
        ok_type = ok_type or (self.kind is float and isinstance(value, int)
                              and not isinstance(value, bool))
        ok = ok_type and (
            (self.choices is None or value in self.choices)
            and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max))
        if not ok:
            raise UserError(f"{key}={value!r} is invalid: must be {self.allowed()}")


# Keys that say where or how verbosely a run ran, not what it trained: runs that differ only in
# these (and the seed) are repeats of one experiment, and a checkpoint resumes across them.
# `objective` only picks the number handed to a sweeper, `keep_best` which evaluation best.pt
# keeps; `num_threads` follows the launcher. Where images are kept (memory or a mapped cache)
# and how many threads decode them do not change a single batch: those keys are operational too,
# as is `malloc_tuning`, which changes how fast the same steps run, not their results.
OPERATIONAL_KEYS = frozenset({
    "objective", "data.root", "data.cache_dir", "data.download", "trainer.progress_bar",
    "trainer.log_every", "trainer.checkpoint_every", "trainer.num_threads", "trainer.keep_best",
    "analysis.at_end", "analysis.samples",
    "trainer.stage_cache", "trainer.reuse_stages",  # a reused stage equals a trained one
    "data.in_memory", "data.in_memory_max_mb", "data.workers", "trainer.malloc_tuning",
})


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}"""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def what_is_trained(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened resolved config without OPERATIONAL_KEYS."""
    return {k: v for k, v in flatten(config).items() if k not in OPERATIONAL_KEYS}


def config_changes(then: dict[str, Any], now: dict[str, Any]) -> str:
    """How two resolved configs differ in what they train ("key: old → new", the first three
    keys), or "" when they train the same."""
    a, b = what_is_trained(then), what_is_trained(now)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(f"{k}: {a.get(k)} → {b.get(k)}" for k in changed[:3])


SCHEMA: dict[str, Rule] = {
    "seed": Rule(int, min=0),
    "device": Rule(str),
    "data.root": Rule(str),
    "data.download": Rule(bool),
    "data.cache_dir": Rule(str, nullable=True),
    "data.source_val_size": Rule(float, min=0),  # below 1: a fraction of the train split
    "data.target_val_size": Rule(float, min=0),
    "data.split_seed": Rule(int, min=0),
    "data.image_size": Rule(int, min=8, nullable=True),
    "data.storage_size": Rule(int, min=1),
    "data.test_fraction": Rule(float, min=0, max=1),
    "trainer.steps": Rule(int, min=0),
    "trainer.batch_size": Rule(int, min=1),
    "trainer.eval_every": Rule(int, min=1),
    "trainer.eval_batch_size": Rule(int, min=1),
    "trainer.log_every": Rule(int, min=1),
    "trainer.checkpoint_every": Rule(int, min=0),
    "trainer.deterministic": Rule(bool),
    "trainer.progress_bar": Rule(bool),
    "trainer.precision": Rule(str, choices=("auto", "fp32", "bf16")),
    "trainer.num_threads": Rule(int, min=1, nullable=True),
    "trainer.reuse_stages": Rule(bool),
    "trainer.stage_cache": Rule(str, nullable=True),
    "trainer.malloc_tuning": Rule(bool),
    "trainer.flush_denormal": Rule(bool),
    "trainer.compile": Rule(bool),
    "trainer.compile_mode": Rule(str, nullable=True,
                                 choices=("default", "reduce-overhead", "max-autotune",
                                          "max-autotune-no-cudagraphs")),
    "trainer.compile_backend": Rule(str, choices=("inductor", "aot_eager", "eager")),
    "trainer.optimizer.lr": Rule(float, min=0),
    "trainer.lr_schedule.alpha": Rule(float, min=0),
    "trainer.lr_schedule.beta": Rule(float, min=0),
    "analysis.at_end": Rule(bool),
    "analysis.samples": Rule(int, min=2),
}
