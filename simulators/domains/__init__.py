"""Device physics per domain of the contract."""

from __future__ import annotations

from simulators.domains.air import AirModel
from simulators.domains.base import DomainModel, Excursion, MetricBehaviour
from simulators.domains.coldchain import ColdchainModel
from simulators.domains.pool import PoolModel
from simulators.domains.waste import WasteModel
from simulators.domains.wastewater import WastewaterModel
from simulators.domains.water import WaterModel

MODELS: dict[str, type[DomainModel]] = {
    "coldchain": ColdchainModel,
    "air": AirModel,
    "water": WaterModel,
    "pool": PoolModel,
    "wastewater": WastewaterModel,
    "waste": WasteModel,
}

__all__ = ["MODELS", "DomainModel", "Excursion", "MetricBehaviour"]
