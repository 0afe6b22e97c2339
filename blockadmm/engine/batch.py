"""One mini-batch as a trainer receives it: placed on the training device and checked before anything is
touched (one place for both trainers, so their errors say the same)."""
from __future__ import annotations

import torch


def is_classification(y: torch.Tensor) -> bool:
    """Integer class labels (one per sample): accuracy is reported; float targets are a regression (loss only)."""
    return not y.is_floating_point() and y.dim() == 1


def on_device(x: torch.Tensor, y: torch.Tensor, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x on `device` in the blocks' dtype, integer labels as int64."""
    y = y.to(device)
    integer = not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
    return x.to(device, dtype), y.long() if integer else y


def check_batch(x: torch.Tensor, y: torch.Tensor, index, *, input_shape: tuple, n_classes: int | None,
                num_samples: int | None) -> torch.Tensor | None:
    """Raise a one-line error for a batch the trainer cannot use; return the sample index as int64.
    n_classes: checks the labels for the default cross-entropy (None: any labels); num_samples: the tables' rows
    in batch mode (None: online, no index needed)."""
    if x.shape[0] == 0:
        raise ValueError("the mini-batch is empty (0 rows)")
    if tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"input batch has per-sample shape {tuple(x.shape[1:])}, "
                         f"the model was built for {tuple(input_shape)}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    if n_classes is not None:
        if y.dtype not in (torch.int64, torch.int32) or y.dim() != 1:
            raise ValueError(f"the default loss (cross-entropy) needs 1-D integer class labels, got {y.dtype} of shape "
                             f"{tuple(y.shape)}; for regression targets pass loss=nn.MSELoss() (or another loss)")
        lo, hi = torch.stack(torch.aminmax(y)).tolist()
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"labels must lie in 0..{n_classes - 1} (the last block has {n_classes} outputs), "
                             f"got {lo}..{hi}")
    if num_samples is None:
        return None if index is None else torch.as_tensor(index).long()
    if index is None:
        raise ValueError("batch mode needs the sample index of every row: use a dataset that yields (x, y, index) "
                         "(every blockadmm.data dataset does) and call step(x, y, index), or use mode='online'")
    index = torch.as_tensor(index)
    if index.dtype == torch.bool or index.is_floating_point() or index.is_complex():
        raise TypeError(f"sample indices must be integers, got {index.dtype}: pass the dataset's index column")
    if index.shape != (x.shape[0],):
        raise ValueError(f"the sample index has shape {tuple(index.shape)}, the batch {x.shape[0]} rows")
    if torch.unique(index).numel() != index.numel():
        raise ValueError("a sample index appears twice in one batch: batch mode keeps one z and u per sample, "
                         "so each sample may appear at most once per mini-batch")
    if int(index.min()) < 0 or int(index.max()) >= num_samples:
        raise IndexError(f"sample index {int(index.min())}..{int(index.max())} outside the tables' "
                         f"0..{num_samples - 1}: num_samples must be the length of the training set")
    return index.long()
