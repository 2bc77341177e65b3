"""Global-norm gradient clipping, threshold 2.0 (paper section 8)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float = 2.0) -> torch.Tensor:
    """Scale all gradients by max_norm / max(norm, max_norm), norm the L2 norm over all of them.

    This is TF's `clip_by_global_norm` (no 1e-6 in the divisor, unlike `torch.nn.utils.clip_grad_norm_`).
    Returns the norm before clipping as a float32 scalar tensor on the gradients' device, not a
    Python float: reading it waits for the GPU, and the training loop reads it only when it logs
    (docs/benchmarks.md: a read every step kept the GPU idle between steps). A non-finite norm
    leaves the gradients as they are; `torch.isfinite(norm)` is the mask the optimiser's
    `step(finite=...)` takes to skip the update on the device.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    device = grads[0].device
    # Squares summed in float32 at least: a bf16 sum over 24M entries would lose the small ones.
    # One fused kernel per device and dtype for the per-tensor norms (about 300 tensors here).
    norms = [n.to(device) for n in _per_tensor_norms(grads)]
    total = torch.linalg.vector_norm(torch.stack(norms))
    scale = torch.clamp(max_norm / total, max=1.0)
    scale = torch.where(torch.isfinite(total), scale, torch.ones_like(scale))
    for (grad_device, dtype), group in _grouped(grads).items():
        torch._foreach_mul_(group, scale.to(grad_device, dtype))
    return total


def _grouped(grads: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], list[torch.Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    return groups


def _per_tensor_norms(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    norms = []
    for group in _grouped(grads).values():
        norms.extend(torch._foreach_norm(group, 2, dtype=torch.float32))
    return norms
