"""The HTTP API (contract section 5): registry, history, alerts, rules, silences, auth."""

from api.app import create_app
from api.provisioning import DeviceProvisioner, NoopProvisioner

__all__ = ["DeviceProvisioner", "NoopProvisioner", "create_app"]
