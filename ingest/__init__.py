"""MQTT intake, payload validation, the device registry, and the storage schema and writer."""

from ingest.catalogue import CATALOGUE, DOMAINS, EVENT_FIELDS, Metric, metric
from ingest.model import (
    DeviceInfo,
    EvalBatch,
    Event,
    ParsedMessage,
    RawMessage,
    Reading,
    Reason,
    Rejection,
    StatusUpdate,
)
from ingest.schema import Backend, SchemaError, check_schema, migrate

__all__ = [
    "CATALOGUE",
    "DOMAINS",
    "EVENT_FIELDS",
    "Backend",
    "DeviceInfo",
    "EvalBatch",
    "Event",
    "Metric",
    "ParsedMessage",
    "RawMessage",
    "Reading",
    "Reason",
    "Rejection",
    "SchemaError",
    "StatusUpdate",
    "check_schema",
    "metric",
    "migrate",
]
