"""Training loss: label-smoothed cross-entropy on the main and auxiliary logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inception_loss(
    output: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None],
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.1,
    aux_weight: float = 0.4,
) -> torch.Tensor:
    """CE(logits) + aux_weight * CE(aux_logits), each against targets smoothed by label_smoothing.

    Smoothing (paper section 7, eps 0.1) replaces the one-hot target with (1 - eps) * one_hot + eps / K
    for K classes, as TF's `softmax_cross_entropy(label_smoothing=...)` does. The weight 0.4 is the TF
    reference's; the paper gives none. `output` is the model's training output
    `InceptionOutputs(logits, aux_logits)` (aux_logits may be None) or a plain logits tensor.
    Both terms are computed in float32, whatever autocast gave the logits. Mean over the batch.
    """
    if isinstance(output, torch.Tensor):
        logits, aux_logits = output, None
    else:
        logits, aux_logits = output
    loss = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
    if aux_logits is not None and aux_weight != 0:
        loss = loss + aux_weight * F.cross_entropy(aux_logits.float(), target, label_smoothing=label_smoothing)
    return loss
