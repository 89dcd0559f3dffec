"""One backoff rule for every retry loop: exponential, capped, with jitter.

The exponent is capped before it is computed, so a counter that has grown for months (a bucket that was
gone for a long time) never overflows a float.
"""

from __future__ import annotations

import random

#: 2**_MAX_EXPONENT seconds is far beyond any cap used; the exponent stops growing there.
_MAX_EXPONENT = 30


def backoff_delay(failures: int, *, base_s: float = 1.0, cap_s: float, jitter: bool = True) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1 → ``base_s``, doubling, ≤ ``cap_s``).

    With ``jitter`` the delay is drawn from [50 %, 100 %] of that, so many hosts retrying the same outage
    do not knock on the same second.
    """
    exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
    delay = min(cap_s, base_s * 2.0**exponent)
    return delay * random.uniform(0.5, 1.0) if jitter else delay
