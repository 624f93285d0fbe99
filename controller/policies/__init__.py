"""ABR policy registry: name -> implementation, imported lazily so that `bba` never pays for torch.

To add a policy: subclass `AbrPolicy` in a module of this package and add its name here.
"""

from __future__ import annotations

import importlib
from typing import Any

from controller.policies.base import AbrPolicy

_REGISTRY: dict[str, str] = {
    "bba": "controller.policies.bba:BBA",
    "rb": "controller.policies.rate_based:RateBased",
    "bola": "controller.policies.bola:Bola",
    "robustmpc": "controller.policies.mpc:RobustMPC",
    "fastmpc": "controller.policies.mpc:FastMPC",
    "robustmpc-pm1": "controller.policies.mpc:RobustMPCPlusMinusOne",
    "pensieve": "controller.policies.pensieve:PensievePolicy",
    "netllm": "controller.policies.netllm_policy:NetLLMPolicy",
}

OFFLINE_POLICIES = ("optimal",)
"""Policies that need the whole trace ahead of time: simulator only (see emulation.abr_optimal)."""


class UnknownPolicyError(KeyError):
    pass


def available_policies() -> list[str]:
    return sorted(_REGISTRY)


def policy_class(name: str) -> type[AbrPolicy]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise UnknownPolicyError(f"unknown policy {name!r}; known: {', '.join(available_policies())}") from None
    module_name, cls_name = target.split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def make_policy(name: str, **options: Any) -> AbrPolicy:
    """A fresh policy instance; options are the implementation's constructor arguments."""
    return policy_class(name)(**options)
