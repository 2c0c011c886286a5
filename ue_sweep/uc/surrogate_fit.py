"""What a fitted surrogate (``surrogate.weights=fit``) learns from: ``surrogate.fit_on``.

UC's threat model has a protector whose surrogate never saw the labels the victim will learn;
fitting it on those labels makes k-means recover the classes, so every cluster-wise pattern is
class-wise noise. The choices:

- ``labels``: the training set with the victim's labels (the demo until now);
- ``half_classes``: only the images of the first ``C // 2`` classes with their labels (digits
  0-4 of ten); the protection is still made and judged on all classes;
- ``rotation``: no labels at all. Self-supervised rotation prediction (Gidaris et al. 2018):
  every image is shown turned by 0, 90, 180 and 270 degrees and the surrogate learns which turn
  it was; its pooled features then describe shapes, not classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ue_sweep.data.splits import ImageSplits

ROTATIONS = 4


@dataclass(frozen=True)
class FitTask:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int


def fit_classes(fit_on: str, num_classes: int) -> int:
    """Outputs of the surrogate's head under ``fit_on``."""
    return {"labels": num_classes, "half_classes": max(num_classes // 2, 1)}.get(fit_on, ROTATIONS)


def rotated(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image turned by each multiple of 90 degrees, and which turn it got: ``[4N]``."""
    turns = [torch.rot90(images, r, dims=(-2, -1)) for r in range(ROTATIONS)]
    labels = torch.arange(ROTATIONS, device=images.device).repeat_interleave(len(images))
    return torch.cat(turns), labels


def fit_task(fit_on: str, data: ImageSplits) -> FitTask:
    """The images, labels and number of classes the surrogate is fitted on."""
    classes = fit_classes(fit_on, data.num_classes)
    if fit_on == "labels":
        return FitTask(
            data.train_images, data.train_labels, data.test_images, data.test_labels, classes
        )
    if fit_on == "half_classes":
        train = data.train_labels < classes
        test = data.test_labels < classes
        return FitTask(
            data.train_images[train.to(data.train_images.device)],
            data.train_labels[train],
            data.test_images[test.to(data.test_images.device)],
            data.test_labels[test],
            classes,
        )
    train_images, train_labels = rotated(data.train_images)
    test_images, test_labels = rotated(data.test_images)
    return FitTask(
        train_images,
        train_labels.to(data.train_labels.device),
        test_images,
        test_labels.to(data.test_labels.device),
        classes,
    )
