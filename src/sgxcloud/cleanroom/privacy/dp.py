"""Differential-privacy noise, drawn by OpenDP's samplers (never hand-rolled).

Counts of distinct people have sensitivity 1; bounded sums (purchases or
revenue per person, clipped to the definition's contribution bounds) have
sensitivity equal to the bound.  Laplace noise gives pure ε-DP per
measurement; Gaussian noise gives (ε, δ)-DP, with the smallest scale whose
zCDP → approximate-DP conversion meets (ε, δ).
"""

from __future__ import annotations

import math
from functools import cache

import opendp.prelude as dp

from sgxcloud.cleanroom.definition import DifferentialPrivacy

dp.enable_features("contrib")


class NoiseSource:
    """Adds calibrated noise for one collaboration's DP settings."""

    def __init__(self, settings: DifferentialPrivacy) -> None:
        self.settings = settings

    def count(self, true_count: int, epsilon: float, delta: float | None = None) -> int:
        """A noisy count of distinct people (sensitivity 1), clamped at 0."""
        measurement = _measurement(self.settings.mechanism, True, self.scale(1.0, epsilon, delta))
        return max(0, int(measurement(int(true_count))))

    def bounded_sum(
        self, value: float, bound: float, epsilon: float, delta: float | None = None
    ) -> float:
        """A noisy sum where each person contributed at most ``bound`` (≥ 0)."""
        measurement = _measurement(
            self.settings.mechanism, False, self.scale(bound, epsilon, delta)
        )
        return max(0.0, float(measurement(float(value))))

    def scale(self, sensitivity: float, epsilon: float, delta: float | None = None) -> float:
        if self.settings.mechanism == "laplace":
            return sensitivity / epsilon
        return _gaussian_scale(sensitivity, epsilon, delta or self.settings.delta or 1e-6)


@cache
def _measurement(mechanism: str, integer: bool, scale: float) -> dp.Measurement:
    domain = dp.atom_domain(T=int) if integer else dp.atom_domain(T=float, nan=False)
    metric = dp.absolute_distance(T=int if integer else float)
    if mechanism == "laplace":
        return dp.m.make_laplace(domain, metric, scale)
    return dp.m.make_gaussian(domain, metric, scale)


@cache
def _gaussian_scale(sensitivity: float, epsilon: float, delta: float) -> float:
    def meets(scale: float) -> bool:
        gauss = dp.m.make_gaussian(
            dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale
        )
        profile = dp.c.make_zCDP_to_approxDP(gauss).map(float(sensitivity))
        try:
            return profile.epsilon(delta) <= epsilon
        except dp.OpenDPException:  # ε overflows for tiny scales: far too little noise
            return False

    # OpenDP's bisection over the scale: the smallest noise that meets (ε, δ).
    upper = sensitivity * (math.sqrt(2 * math.log(1.25 / delta)) / epsilon) * 4 + 1.0
    return float(dp.binary_search(meets, bounds=(sensitivity * 1e-3, upper)))
