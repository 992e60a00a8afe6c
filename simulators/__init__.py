"""Simulated devices of every monitored domain, with faults and a ground-truth log.

The model layer (`Fleet`, `build_fleet`) is pure: it turns a seed and a time range into
`Message`s and `TruthRecord`s. `MqttTransport` puts messages on the broker, `publish`
(async) and `publish_sync` pace them in simulated or real time.
"""

from simulators.faults import KINDS, FaultSpecError, Injection, Kind, parse_faults
from simulators.fleet import Fleet, SimResult, build_fleet
from simulators.model import DeviceSpec, Message, Site, TruthRecord, topic
from simulators.registry import register_fleet, register_fleet_async
from simulators.rules import ALL_RULE_IDS, REFERENCE_RULES, RefRule
from simulators.runner import RunStats, play, publish, publish_sync
from simulators.transport import MqttTransport, Received, Subscriber, TransportError
from simulators.truth import TruthWriter, read_truth

__all__ = [
    "ALL_RULE_IDS",
    "KINDS",
    "REFERENCE_RULES",
    "DeviceSpec",
    "FaultSpecError",
    "Fleet",
    "Injection",
    "Kind",
    "Message",
    "MqttTransport",
    "Received",
    "RefRule",
    "RunStats",
    "SimResult",
    "Site",
    "Subscriber",
    "TransportError",
    "TruthRecord",
    "TruthWriter",
    "build_fleet",
    "parse_faults",
    "play",
    "publish",
    "publish_sync",
    "read_truth",
    "register_fleet",
    "register_fleet_async",
    "topic",
]
