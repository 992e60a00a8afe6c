"""Alert rules, evaluation, the engine, the alert lifecycle, and notifications (`alerts.notify`)."""

from alerts.engine import AlertEngine, EngineCounters, seed_defaults
from alerts.lifecycle import (
    LifecycleError,
    ManualResolveNotAllowed,
    NoteRequired,
    acknowledge,
    alert_to_contract_dict,
    resolve_manually,
)
from alerts.notify import Notifier, NotifyConfig, NotifyStats
from alerts.packs import PACKS, default_rules
from alerts.rules import Rule, RuleBase, Scope, parse_rule

__all__ = [
    "PACKS",
    "AlertEngine",
    "EngineCounters",
    "LifecycleError",
    "ManualResolveNotAllowed",
    "NoteRequired",
    "Notifier",
    "NotifyConfig",
    "NotifyStats",
    "Rule",
    "RuleBase",
    "Scope",
    "acknowledge",
    "alert_to_contract_dict",
    "default_rules",
    "parse_rule",
    "resolve_manually",
    "seed_defaults",
]
