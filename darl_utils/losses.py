"""OCC, DaRL's over-confidence calibration: CE(p, y) + lambda * KL(p || q_rho(y)) (docs/STUDY.md section 5).

q_rho(y) keeps 1 - rho on the gold degree and spreads rho over the others:
- "ordinal" (default): in proportion to closeness 1 / |i - y| on the degree scale, so a strong pair lends more
  mass to weak than to irrelevant (our reading of "a smooth prior over the relevance degrees");
- "uniform": equally.
direction "reverse" is the paper's KL(p || q): it pulls p towards the prior only where p puts mass.
direction "forward" is KL(q || p) = CE(q, p) - H(q): with it the loss is label smoothing, up to a constant and
the factor (1 + lambda) (see `label_smoothing_equivalent`): the natural control for OCC.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .data import DEGREES

PRIORS = ("ordinal", "uniform")
DIRECTIONS = ("reverse", "forward")


def check_occ(lam: float, rho: float, prior: str, direction: str) -> None:
    """Raise ValueError naming the bad OCC setting."""
    if not lam >= 0:
        raise ValueError(f"occ_lambda: {lam!r} must be >= 0")
    if not 0 <= rho < 1:
        raise ValueError(f"occ_rho: {rho!r} must be in [0, 1)")
    if prior not in PRIORS:
        raise ValueError(f"occ_prior: {prior!r} is not one of {list(PRIORS)}")
    if direction not in DIRECTIONS:
        raise ValueError(f"occ_direction: {direction!r} is not one of {list(DIRECTIONS)}")
    if direction == "reverse" and rho == 0 and lam > 0:
        # q would be one-hot and KL(p || q) infinite wherever p is not.
        raise ValueError("occ_rho: 0 makes KL(p || q) infinite in the 'reverse' direction; use rho > 0")


def prior_matrix(rho: float, prior: str = "ordinal", n: int = len(DEGREES)) -> torch.Tensor:
    """Row y is q_rho(y), a distribution over the n ordered degrees."""
    index = torch.arange(n, dtype=torch.float64)
    distance = (index[:, None] - index[None, :]).abs()
    weight = torch.where(distance > 0, 1.0 / distance.clamp(min=1), torch.zeros_like(distance))
    if prior == "uniform":
        weight = (distance > 0).double()
    spread = weight / weight.sum(1, keepdim=True)
    return (1 - rho) * torch.eye(n, dtype=torch.float64) + rho * spread


class OCCLoss(nn.Module):
    """Mean over the batch of CE(p, y) + lambda * KL(., .) between p = softmax(logits) and q_rho(y)."""

    def __init__(self, lam: float = 0.5, rho: float = 0.1, prior: str = "ordinal", direction: str = "reverse"):
        super().__init__()
        check_occ(lam, rho, prior, direction)
        self.lam, self.rho, self.prior, self.direction = lam, rho, prior, direction
        self.register_buffer("q", prior_matrix(rho, prior).float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1)
        ce = F.nll_loss(log_p, labels)
        if self.lam == 0:
            return ce
        q = self.q.to(logits.device)[labels]
        log_q = torch.log(q.clamp(min=torch.finfo(q.dtype).tiny))  # clamp: log 0 only where q (forward) is 0
        if self.direction == "reverse":
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        else:
            kl = (q * (log_q - log_p)).sum(-1)
        return ce + self.lam * kl.mean()

    def extra_repr(self) -> str:
        return f"lam={self.lam}, rho={self.rho}, prior={self.prior!r}, direction={self.direction!r}"


def label_smoothing_equivalent(lam: float, rho: float, n: int = len(DEGREES)) -> float:
    """The epsilon of torch's label smoothing that the forward, uniform OCC loss equals, up to (1 + lambda)
    and a constant: CE + lam * KL(q || p) = (1 + lam) * CE_eps - lam * H(q), eps = n lam rho / ((n-1)(1+lam))."""
    return n * lam * rho / ((n - 1) * (1 + lam))


def make_loss(lam: float, rho: float, prior: str, direction: str) -> nn.Module:
    """Plain cross-entropy when lambda is 0, otherwise the OCC loss."""
    if lam == 0:
        check_occ(lam, rho, prior, direction)
        return nn.CrossEntropyLoss()
    return OCCLoss(lam, rho, prior, direction)
