"""Cognitive Monitor: last-layer attention entropy with attention sinks removed (trigger.py decides).

The entropy is computed from the last layer's query and the keys already in the cache, so the
backbone keeps its fast attention kernels. Removing the sinks and renormalising equals a softmax
over the non-sink keys, which is what we compute (in log space, so a distribution whose mass sits
almost entirely on the sinks is still renormalised exactly instead of dividing zero by zero).
Defined degenerate cases: a query that sees no non-sink key (context no longer than the sink set)
has entropy 0 (no evidence of uncertainty, never fires); padding and masked latent slots are not keys.
"""
from __future__ import annotations

import torch


def sink_mask(mask: torch.Tensor, n_sinks: int) -> torch.Tensor:
    """(B, T) real-slot mask -> (B, T) bool marking each row's first n_sinks real positions."""
    real = mask.bool()
    return real & (real.long().cumsum(-1) <= n_sinks)


def attention_entropy(
    query: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor, sinks: torch.Tensor, scaling: float,
    normalize: bool = False,
) -> torch.Tensor:
    """Head-averaged entropy of each query's attention over visible non-sink keys.

    query (B, H, Q, D) rotated; keys (B, n_kv, T, D) rotated (the cache); visible (B, Q, T) bool
    (causal and padding); sinks (B, T) bool. Returns (B, Q) float32. normalize: divided by log n, n the
    query's visible non-sink keys (the entropy's maximum), so the signal does not grow with the answer
    (a query that sees fewer than two such keys has 0).
    """
    b, h, q, d = query.shape
    n_kv = keys.shape[1]
    group = h // n_kv
    # Fold the query heads of one KV group into the query axis so the cache is never repeated.
    folded = query.reshape(b, n_kv, group * q, d)  # (B, n_kv, G*Q, D)
    scores = torch.matmul(folded, keys.transpose(-1, -2)).float() * scaling  # (B, n_kv, G*Q, T)
    scores = scores.view(b, n_kv, group, q, -1)
    allowed = (visible & ~sinks[:, None, :])[:, None, None]  # (B, 1, 1, Q, T)
    scores = scores.masked_fill(~allowed, float("-inf"))
    log_p = torch.log_softmax(scores, dim=-1)
    plogp = torch.where(allowed, log_p.exp() * log_p, torch.zeros((), dtype=log_p.dtype))
    entropy = -plogp.sum(-1)  # (B, n_kv, G, Q)
    entropy = torch.nan_to_num(entropy, nan=0.0).mean(dim=(1, 2))  # rows with no allowed key: defined as 0
    if normalize:
        n = allowed[:, 0, 0].sum(-1).float()  # (B, Q)
        entropy = torch.where(n > 1, entropy / n.clamp_min(2).log(), torch.zeros_like(entropy))
    return entropy
