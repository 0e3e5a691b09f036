"""LPFT's last step: theta(alpha) = (1 - alpha) * theta_LP + alpha * theta_FT over every floating-point tensor.

alpha = 0 is the linear probe (pretrained backbone + probed head), alpha = 1 the model fine-tuned from it.
"""
from __future__ import annotations

import torch


class InterpolationError(ValueError):
    """The two weight sets do not belong to the same architecture."""


def check_compatible(theta_lp: dict, theta_ft: dict) -> None:
    missing, extra = sorted(set(theta_lp) - set(theta_ft)), sorted(set(theta_ft) - set(theta_lp))
    if missing or extra:
        raise InterpolationError(f"weight sets differ in keys: only in LP {missing[:5]}, only in FT {extra[:5]}")
    for key, a in theta_lp.items():
        b = theta_ft[key]
        if a.shape != b.shape:
            raise InterpolationError(f"{key}: shape {tuple(a.shape)} in LP but {tuple(b.shape)} in FT")
        if a.dtype != b.dtype:
            raise InterpolationError(f"{key}: dtype {a.dtype} in LP but {b.dtype} in FT")


def interpolate(theta_lp: dict, theta_ft: dict, alpha: float) -> dict:
    """A new state dict; integer and boolean buffers (position ids, say) are copied from theta_FT."""
    if not 0 <= alpha <= 1:
        raise InterpolationError(f"alpha: {alpha!r} must be in [0, 1]")
    check_compatible(theta_lp, theta_ft)
    return {key: torch.lerp(a.float(), theta_ft[key].float(), alpha).to(a.dtype) if a.is_floating_point()
            else theta_ft[key].clone() for key, a in theta_lp.items()}


def choose_alpha(sweep: list[dict], metric: str = "macro_f1") -> float:
    """alpha* = the alpha with the best id_val metric (id_val only; ties go to the smaller alpha,
    the one nearer the pretrained weights)."""
    best = max(sweep, key=lambda r: (r["id_val"][metric], -r["alpha"]))
    return best["alpha"]
