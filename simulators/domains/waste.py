"""Medical-waste temporary store of a hospital: departments seal and weigh bags, porters
store them, the disposal company collects once a day and weighs again; the room's
temperature, humidity and fill level are monitored.

Bag faults (overdue, weight mismatch, a collected bag that was never sealed) are armed
by the fault layer and reported back as `notes` for the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from random import Random
from typing import Any, ClassVar

from simulators.domains.base import DomainModel, Excursion, MetricBehaviour, ModelEvent, daily, ou
from simulators.model import local_day, local_hour
from simulators.rules import STORAGE_LIMIT_S, WEIGHT_TOLERANCE_FRACTION, WEIGHT_TOLERANCE_KG

# Department -> waste categories it produces, with weights.
_DEPARTMENTS: dict[str, tuple[tuple[str, float], ...]] = {
    "ICU": (("infectious", 0.8), ("sharps", 0.2)),
    "Surgery": (("infectious", 0.6), ("pathological", 0.25), ("sharps", 0.15)),
    "Internal-Medicine": (("infectious", 0.8), ("sharps", 0.2)),
    "Emergency": (("infectious", 0.75), ("sharps", 0.25)),
    "Laboratory": (("infectious", 0.6), ("chemical", 0.4)),
    "Pathology": (("pathological", 0.8), ("chemical", 0.2)),
    "Pharmacy": (("pharmaceutical", 1.0),),
    "Outpatient": (("infectious", 0.7), ("sharps", 0.3)),
}
_DEPT_SHARE = {"ICU": 3, "Surgery": 3, "Internal-Medicine": 4, "Emergency": 3, "Outpatient": 3}
_WEIGHT_KG = {
    "infectious": (1.0, 6.0),
    "pathological": (0.5, 3.0),
    "sharps": (0.5, 2.5),
    "pharmaceutical": (0.3, 3.0),
    "chemical": (0.5, 4.0),
}
COLLECTOR = "Municipal-Medical-Waste-Disposal-Co"


@dataclass(slots=True)
class Bag:
    bag_id: str
    category: str
    department: str
    weight_kg: float
    sealed_at: float
    store_at: float
    stored_at: float | None = None
    overdue: bool = False  # held back past the 48 h limit by a fault
    release_after: float = 0.0


def mismatch_tolerance_kg(weight_kg: float) -> float:
    return max(WEIGHT_TOLERANCE_KG, WEIGHT_TOLERANCE_FRACTION * weight_kg)


class WasteModel(DomainModel):
    """The storage room's sensors and scale terminal."""

    domain = "waste"
    profiles = (("storage_room", 1.0),)
    default_interval_s: ClassVar[dict[str, int]] = {"storage_room": 300}
    site_kind = "hospital"
    devices_per_site = 1
    behaviours: ClassVar[dict[str, MetricBehaviour]] = {
        "temp_c": MetricBehaviour("temp_c", 1, 8.0, 0.2, (-127.0, 85.0)),
        "rh_pct": MetricBehaviour("rh_pct", 1, 20.0, 1.0, (-1.0, 120.0)),
        "fill_pct": MetricBehaviour("fill_pct", 1, 30.0, 1.0, (-5.0, 130.0)),
    }
    # The storage room's air conditioning fails.
    excursions = (
        Excursion(
            "cooling_failure", "temp_c", 22.0, 30.0, 3600, 3600, 8 * 3600, "waste.room_temp_high"
        ),
    )
    max_substep_s = 60.0

    def __init__(self, profile: str, rng: Random, t0: float) -> None:
        super().__init__(profile, rng, t0)
        self.bags_per_day = rng.uniform(20.0, 80.0)
        self.capacity_kg = self.bags_per_day * 3.0 * rng.uniform(1.6, 2.2)
        self.collect_hour = rng.uniform(14.5, 16.5)
        self.temp_mean = rng.uniform(14.5, 17.0)
        self.temp_dev = 0.0
        self.rh = rng.uniform(50.0, 65.0)
        self.waiting: list[Bag] = []  # sealed, on the way to the store
        self.stored: list[Bag] = []
        self.counter = 0
        self.manifests = 0
        self.last_collect_day = local_day(t0) if local_hour(t0) >= self.collect_hour else -1
        self.hour = local_hour(t0)
        # Armed by the fault layer.
        self.arm_overdue = 0
        self.arm_mismatch = 0
        self.arm_unsealed = 0
        self.notes: list[tuple[str, str, float, float, dict[str, Any]]] = []

    def step(self, t: float, dt: float, events: list[ModelEvent]) -> None:
        rng = self.rng
        self.hour = hour = local_hour(t)
        self.temp_dev = ou(self.temp_dev, 0.0, 0.4, 3600, dt, rng)
        self.rh = ou(self.rh, 58.0, 4.0, 4 * 3600, dt, rng)
        # Departments seal bags through the working day (07:00-20:00).
        if 7.0 <= hour < 20.0 and rng.random() < self.bags_per_day / 13.0 * dt / 3600:
            events.append(self._seal(t))
        for bag in [b for b in self.waiting if b.store_at <= t]:
            self.waiting.remove(bag)
            bag.stored_at = bag.store_at
            if self.arm_overdue:
                self.arm_overdue -= 1
                bag.overdue = True
                bag.release_after = bag.store_at + STORAGE_LIMIT_S + rng.uniform(1, 20) * 3600
            self.stored.append(bag)
            events.append((bag.store_at, "bag_stored", {"bag_id": bag.bag_id}))
        day = local_day(t)
        if hour >= self.collect_hour and day != self.last_collect_day:
            self.last_collect_day = day
            events.extend(self._collect(t, day))

    def _seal(self, t: float) -> ModelEvent:
        rng = self.rng
        depts = list(_DEPARTMENTS)
        dept = rng.choices(depts, weights=[_DEPT_SHARE.get(d, 1) for d in depts])[0]
        cats = _DEPARTMENTS[dept]
        category = rng.choices([c for c, _ in cats], weights=[w for _, w in cats])[0]
        weight = round(rng.uniform(*_WEIGHT_KG[category]), 2)
        self.counter += 1
        bag_id = f"{self.device_id}-B{self.counter:06d}"
        self.waiting.append(Bag(bag_id, category, dept, weight, t, t + rng.uniform(600, 7200)))
        fields = {"bag_id": bag_id, "category": category, "weight_kg": weight, "department": dept}
        return (t, "bag_sealed", fields)

    def _collect(self, t: float, day: int) -> list[ModelEvent]:
        rng = self.rng
        self.manifests += 1
        manifest = f"{self.device_id}-M{day}-{self.manifests:04d}"
        events: list[ModelEvent] = []
        keep: list[Bag] = []
        ts = t
        for bag in self.stored:
            if bag.overdue and t < bag.release_after:
                keep.append(bag)
                continue
            ts += rng.uniform(5, 20)  # one bag on the scale after another
            # Re-weighing on another scale: within a percent.
            weight = bag.weight_kg * (1.0 + rng.gauss(0, 0.005))
            if self.arm_mismatch:
                self.arm_mismatch -= 1
                off = max(mismatch_tolerance_kg(bag.weight_kg) * rng.uniform(1.5, 4.0), 0.3)
                weight = max(0.05, bag.weight_kg + (off if rng.random() < 0.5 else -off))
                self.notes.append(
                    (
                        "weight_mismatch",
                        bag.bag_id,
                        ts,
                        ts,
                        {"sealed_kg": bag.weight_kg, "collected_kg": round(weight, 2)},
                    )
                )
            if bag.overdue:
                assert bag.stored_at is not None
                self.notes.append(
                    ("bag_overdue", bag.bag_id, bag.stored_at, ts, {"stored_s": ts - bag.stored_at})
                )
            events.append(
                (
                    ts,
                    "bag_collected",
                    {
                        "bag_id": bag.bag_id,
                        "weight_kg": round(weight, 2),
                        "manifest_no": manifest,
                        "collector": COLLECTOR,
                    },
                )
            )
        while self.arm_unsealed:
            self.arm_unsealed -= 1
            self.counter += 1
            bag_id = f"{self.device_id}-X{self.counter:06d}"
            ts += rng.uniform(5, 20)
            weight = round(rng.uniform(1.0, 5.0), 2)
            fields = {
                "bag_id": bag_id,
                "weight_kg": weight,
                "manifest_no": manifest,
                "collector": COLLECTOR,
            }
            events.append((ts, "bag_collected", fields))
            self.notes.append(("unsealed_bag", bag_id, ts, ts, {"collected_kg": weight}))
        self.stored = keep
        return events

    def open_overdue(self) -> list[Bag]:
        """Overdue bags still in the store (for truth records when a run ends)."""
        return [b for b in self.stored if b.overdue]

    def read(self) -> dict[str, float]:
        g = self.rng.gauss
        stored_kg = sum(b.weight_kg for b in self.stored)
        return {
            "temp_c": self.temp_mean + 1.0 * daily(self.hour, 15.0) + self.temp_dev + g(0, 0.05),
            "rh_pct": self.rh + g(0, 0.5),
            # An ultrasonic level sensor: a little noise even when nothing moves.
            "fill_pct": min(100.0, max(0.0, 100.0 * stored_kg / self.capacity_kg + g(0, 0.3))),
        }
