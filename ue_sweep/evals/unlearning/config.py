"""``evals.unlearning``: SISA's shards, slices and epochs, and the points to forget."""

from __future__ import annotations

from dataclasses import dataclass

from ue_sweep.config import setting

CONDITIONS = ("clean", "protected")


DEFAULT_REQUESTS = 16


@dataclass
class UnlearningConfig:
    # Disjoint shards (one constituent model each) and slices per shard (one checkpoint each).
    shards: int = setting(4, ge=1)
    slices: int = setting(3, ge=1)
    # A constituent's budget in epochs over its whole shard, spread over its cumulative slices
    # as Bourtoule et al.: 2e/(R+1) epochs per slice (partition.py). null: victim.epochs,
    # raised to the fewest that give every slice an epoch ((slices+2)//2; the record says).
    epochs: int | None = setting(None, ge=1)
    # SISA on clean data and on the UC-protected set: does protection change what is forgotten?
    conditions: list[str] = setting(list(CONDITIONS), one_of=CONDITIONS)  # noqa: RUF009
    # Seeded random training points to forget, unless `request_file` names them (indices into
    # the training split after the hold-out; whitespace or comma separated, `#` comments).
    requests: int = setting(DEFAULT_REQUESTS, ge=1)
    request_file: str | None = None
    # Share of the training split held out as never-seen reference points for the attacks.
    holdout_fraction: float = setting(0.1, gt=0.0, lt=1.0)
