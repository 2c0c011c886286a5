"""Which examples an attack is scored on: a balanced, seeded set of members and non-members.

Members are training-split images (every victim trained on the whole split saw them);
non-members are hold-out images (``data/holdout.py``: no stage of the job saw them). Both are
drawn class by class, the same number of each per class, so neither the class prior nor the
set sizes can carry a signal; the draw depends only on the labels and the seed, so it is the
same for every victim of a job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ue_sweep.runtime.seeding import generator


@dataclass(frozen=True)
class MembershipSplit:
    """Members (indices into the training split) and as many non-members (into the hold-out)."""

    members: torch.Tensor  # int64 [m], sorted
    nonmembers: torch.Tensor  # int64 [m], sorted
    train_size: int

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def pool_index(self) -> torch.Tensor:
        """Positions of members then non-members in the pool ``train ++ holdout`` (the images
        shadow models draw their training halves from)."""
        return torch.cat([self.members, self.train_size + self.nonmembers])

    @property
    def is_member(self) -> torch.Tensor:
        """bool ``[2m]``: True for the members (first), False for the non-members."""
        return torch.arange(2 * self.size) < self.size


def balanced_split(
    train_labels: torch.Tensor, holdout_labels: torch.Tensor, seed: int
) -> MembershipSplit:
    """Per class ``c``: ``min(#train_c, #holdout_c)`` seeded picks from each side."""
    train_labels, holdout_labels = train_labels.cpu(), holdout_labels.cpu()
    members, nonmembers = [], []
    for c in torch.unique(torch.cat([train_labels, holdout_labels])).tolist():
        inside = torch.nonzero(train_labels == c).flatten()
        outside = torch.nonzero(holdout_labels == c).flatten()
        take = min(len(inside), len(outside))
        for side, found, out in (("members", inside, members), ("nonmembers", outside, nonmembers)):
            order = torch.randperm(len(found), generator=generator(seed, "membership", side, c))
            out.append(found[order[:take]])
    return MembershipSplit(
        members=torch.cat(members).sort().values,
        nonmembers=torch.cat(nonmembers).sort().values,
        train_size=len(train_labels),
    )
