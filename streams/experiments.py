"""A/B tests: which arm of an experiment a tenant's requests get, sticky by hashing."""

from __future__ import annotations

import hashlib

from schemas.catalog import Arm, Experiment


def arm_of(experiment: Experiment, tenant: str) -> Arm | None:
    """The tenant's arm, or None when the tenant is outside the experiment's share. A hash of
    the experiment's name and the tenant decides, so every process, every run and every
    request of the tenant agrees, and a tenant's arm in one experiment says nothing of its
    arm in another."""
    digest = hashlib.blake2b(f"{experiment.name}\0{tenant}".encode(), digest_size=8).digest()
    point = int.from_bytes(digest, "big") / 2**64
    if point >= experiment.share:
        return None
    left = point / experiment.share * sum(arm.weight for arm in experiment.arms)
    for arm in experiment.arms:
        left -= arm.weight
        if left < 0:
            return arm
    return experiment.arms[-1]  # rounding at the very top of the range
