"""Canary rollout: pure state machine (machine.advance), Triton metrics analysis, routers, executor."""

from .gateway import httproute, to_yaml, validate_httproute
from .machine import Counters, Observation, Route, Serve, advance, start, stats
from .metrics import observe
from .router import GatewayRouter, TritonRouter, router_config, router_name

__all__ = ["advance", "start", "stats", "Counters", "Observation", "Serve", "Route", "observe", "httproute",
           "validate_httproute", "to_yaml", "TritonRouter", "GatewayRouter", "router_config", "router_name",
           "RolloutExecutor"]


def __getattr__(name):
    if name == "RolloutExecutor":
        from .executor import RolloutExecutor
        return RolloutExecutor
    raise AttributeError(name)
