"""A/B tests: which arm of an experiment a tenant's requests get, sticky by hashing."""

from __future__ import annotations

import hashlib

from schemas.catalog import Arm, Experiment


def arm_of(experiment: Experiment, tenant: str) -> Arm | None:
    """The tenant's arm, or None when the tenant is outside the experiment's share. Hashes of
    the experiment's name and the tenant decide, so every process, every run and every
    request of the tenant agrees, and a tenant's arm in one experiment says nothing of its
    arm in another. One hash decides whether the tenant takes part, another its arm, so that
    ramping the share up adds tenants without moving those already in."""
    if _point(experiment.name, tenant) >= experiment.share:
        return None
    left = _point(experiment.name, tenant, "arm") * sum(arm.weight for arm in experiment.arms)
    for arm in experiment.arms:
        left -= arm.weight
        if left < 0:
            return arm
    return experiment.arms[-1]  # rounding at the very top of the range


def _point(*parts: str) -> float:
    """A point in [0, 1) that the parts decide."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
