"""The user metric of the multi-head example, following edgepipe's metric protocol (README "User metrics"):
``update(outputs, targets)`` per batch, ``compute() -> {name: value}``, ``primary``, ``higher_is_better``.

``score`` is the share of images on which all three heads are right: the class, the parity (p > 0.5), and every
quadrant's ink within 0.1 of the truth. One broken head drops it, whichever head it is.
"""

from __future__ import annotations

import numpy as np


class AllHeadsRight:
    primary = "all_heads"
    higher_is_better = True
    unit = "fraction"            # the gate counts drops in points, like top-1

    def __init__(self) -> None:
        self.hits = {"class": 0, "parity": 0, "ink": 0, "all_heads": 0}
        self.n = 0

    def update(self, outputs: list[np.ndarray], targets: np.ndarray) -> None:
        logits, ink, even = outputs
        t = np.asarray(targets)
        cls = logits.argmax(1) == t[:, 0].astype(int)
        par = (even[:, 0] > 0.5) == (t[:, 1] > 0.5)
        ink_ok = (np.abs(ink - t[:, 2:]) < 0.1).all(1)
        for key, ok in (("class", cls), ("parity", par), ("ink", ink_ok), ("all_heads", cls & par & ink_ok)):
            self.hits[key] += int(ok.sum())
        self.n += len(t)

    def compute(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.hits.items()}
