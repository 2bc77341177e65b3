"""Global-norm gradient clipping, threshold 2.0 (paper section 8)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float = 2.0) -> float:
    """Scale all gradients by max_norm / max(norm, max_norm), norm the L2 norm over all of them.

    This is TF's `clip_by_global_norm` (no 1e-6 in the divisor, unlike `torch.nn.utils.clip_grad_norm_`).
    Returns the norm before clipping, for logging. A non-finite norm leaves the gradients as they
    are, so that the caller can see it and skip the step.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    device = grads[0].device
    # Squares summed in float32 at least: a bf16 sum over 24M entries would lose the small ones.
    norms = [torch.linalg.vector_norm(g, dtype=torch.float32).to(device) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    # On-device arithmetic: one host sync (the returned float), not one per branch.
    scale = torch.clamp(max_norm / total, max=1.0)
    scale = torch.where(torch.isfinite(total), scale, torch.ones_like(scale))
    for g in grads:
        g.mul_(scale.to(g.device, g.dtype))
    return float(total)
