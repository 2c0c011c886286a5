"""The membership evaluation's data: members and non-members, query sets, config rules."""

from __future__ import annotations

import pytest
import torch

from ue_sweep.cli.validation import to_root_config
from ue_sweep.data.holdout import reserve_holdout
from ue_sweep.data.splits import ImageSplits
from ue_sweep.errors import ConfigError
from ue_sweep.evals.membership.pairs import balanced_split
from ue_sweep.evals.membership.queries import clean_queries, published_queries
from ue_sweep.evals.membership.shadows import shadow_plan
from ue_sweep.uc.clustering import nearest_centers
from ue_sweep.uc.noise import apply_cluster_noise


def _traced(counts: list[int]) -> ImageSplits:
    """Images whose pixels hold their index in the loaded training split (traceable), with a
    stratified hold-out of 30%."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    data = ImageSplits(
        "toy", images.contiguous(), labels, images[:3], labels[:3], ("a", "b", "c"), "t"
    )
    return reserve_holdout(data, 0.3, seed=0)


def test_members_and_nonmembers_never_overlap_are_balanced_per_class_and_seeded():
    data = _traced([50, 30, 12])
    split = balanced_split(data.train_labels, data.holdout_labels, seed=1)
    queries = clean_queries(data, split)
    ids = queries.images[:, 0, 0, 0].long()
    members, nonmembers = ids[: split.size], ids[split.size :]
    assert set(members.tolist()).isdisjoint(nonmembers.tolist())
    assert len(set(members.tolist())) == split.size  # no image twice
    assert set(nonmembers.tolist()) <= set(data.holdout_images[:, 0, 0, 0].tolist())
    assert set(members.tolist()) <= set(data.train_images[:, 0, 0, 0].tolist())
    # per class as many members as non-members: the hold-out's 15, 9 and 4
    for c, n in enumerate([15, 9, 4]):
        assert int((queries.labels[: split.size] == c).sum()) == n
        assert int((queries.labels[split.size :] == c).sum()) == n
    assert split.is_member.tolist() == [True] * split.size + [False] * split.size
    again = balanced_split(data.train_labels, data.holdout_labels, seed=1)
    assert torch.equal(again.members, split.members)
    other = balanced_split(data.train_labels, data.holdout_labels, seed=2)
    assert not torch.equal(other.members, split.members)


def test_the_pool_index_finds_the_query_images_in_train_then_holdout():
    data = _traced([50, 30, 12])
    split = balanced_split(data.train_labels, data.holdout_labels, seed=1)
    plan = shadow_plan(data, 4, seed=0)
    assert torch.equal(plan.pool_images[split.pool_index], clean_queries(data, split).images)
    assert plan.keep.sum(1).eq(2).all()
    images, labels = plan.training_set(0)
    assert len(images) == int(plan.keep[:, 0].sum()) and torch.equal(
        labels, plan.pool_labels[plan.keep[:, 0]]
    )


def test_published_queries_perturb_nonmembers_with_their_clusters_noise():
    data = _traced([50, 30, 12])
    split = balanced_split(data.train_labels, data.holdout_labels, seed=1)
    noise = torch.linspace(-0.05, 0.05, 3 * 4).view(3, 1, 2, 2)
    train_ids = torch.arange(len(data.train_images)) % 3
    published = apply_cluster_noise(data.train_images, train_ids, noise)
    held_ids = torch.arange(split.size) % 3
    q = published_queries("protected", published, noise, held_ids, data, split)
    assert torch.equal(q.images[: split.size], published[split.members])
    expected = apply_cluster_noise(data.holdout_images[split.nonmembers], held_ids, noise)
    assert torch.equal(q.images[split.size :], expected)
    assert torch.equal(q.labels, clean_queries(data, split).labels)


def test_nearest_centers_reproduce_the_k_means_assignment():
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(0)
    features = torch.randn(300, 5, generator=g) + 4 * torch.randint(0, 4, (300, 1), generator=g)
    km = KMeans(n_clusters=4, n_init=3, random_state=0).fit(features.numpy())
    ids = nearest_centers(features, torch.from_numpy(km.cluster_centers_))
    assert ids.tolist() == km.labels_.tolist()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["evals.membership.holdout_fraction=0"],
            "holdout_fraction=0.0 is not accepted; expected a",
        ),
        (["evals.membership.holdout_fraction=0.95"], "<= 0.9"),
        (["evals.membership.shadows=3"], "shadows=3 is not accepted; expected an even number"),
        (["evals.membership.shadows=0"], "shadows=0 is not accepted; expected >= 2 for lira"),
        (
            ["evals.membership.shadows=2", "evals.membership.fixed_variance=false"],
            "fixed_variance=False is not accepted; expected true with 2 shadows",
        ),
        (
            ["evals.membership.role=shadow", "evals.membership.shadow_index=4"],
            "shadow_index=4 is not accepted; expected < evals.membership.shadows=4",
        ),
        (["evals.membership.victims=[dp-*]"], "a label (or pattern) of this job's victims"),
        (["evals.membership.query=[]"], "expected at least one of: clean, published"),
        (["evals.membership.attacks=[lira]"], "a list of distinct values of: loss"),
    ],
)
def test_bad_membership_settings_are_refused_naming_the_key(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=r"evals\.membership") as err:
        to_root_config(compose_cfg("evals=[victims,membership]", *overrides), on_this_host=False)
    assert message in str(err.value)


def test_victim_patterns_are_checked_against_the_earlier_evaluations_labels(compose_cfg):
    ok = ["evals=[victims,defenses,membership]", "evals.membership.victims=[none-*,sign]"]
    to_root_config(compose_cfg(*ok), on_this_host=False)
    with pytest.raises(ConfigError, match="uniform"):  # alone: its own clean and protected
        to_root_config(
            compose_cfg("evals=[membership]", "evals.membership.victims=[uniform]"),
            on_this_host=False,
        )
    with pytest.raises(ConfigError, match=r"\[clean\] with uc.source"):
        to_root_config(
            compose_cfg("evals=[membership]", "uc.source=somewhere/noise.pt"), on_this_host=False
        )
    lira_off = [
        "evals=[membership]",
        "evals.membership.shadows=0",
        "evals.membership.attacks=[loss]",
    ]
    assert (
        to_root_config(compose_cfg(*lira_off), on_this_host=False).evals["membership"].shadows == 0
    )
