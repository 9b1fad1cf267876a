"""The site-aware refer rule's statistics: how many blast calls false calls alone explain.

Under "this sample has no blasts", each of the n decided white cells is called blast with the site's measured
false-call rate p, so the blast calls follow Binomial(n, p). The sample is referred when its count b is one that
false calls alone reach less than ALPHA of the time (a one-sided exact binomial test): at 0 % blasts that refers
at most ALPHA of samples at the measured rate, whatever the rate is, instead of every sample once 100 x p
crosses 3.
"""
from __future__ import annotations

import math

ALPHA = 0.01


def binomial_tail(b: int, n: int, p: float) -> float:
    """P(X >= b) for X ~ Binomial(n, p)."""
    if b <= 0:
        return 1.0
    if b > n:
        return 0.0
    p = min(max(p, 1e-12), 1 - 1e-12)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p) for i in range(b, n + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def excess(b: int, n: int, p: float, alpha: float = ALPHA) -> dict:
    """Expected false calls, the tail probability, and whether b is more than false calls explain."""
    tail = binomial_tail(b, n, p)
    return {"blast_calls": int(b), "decided": int(n), "false_call_rate": p, "expected_false": round(n * p, 2),
            "p_value": tail, "alpha": alpha, "refer": bool(b > 0 and tail < alpha)}
