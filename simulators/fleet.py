"""A fleet of simulated devices: ids, sites and profiles, and the merged message stream."""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ingest import DOMAINS
from simulators.device import Item, SimDevice
from simulators.domains import MODELS
from simulators.faults import Injection, parse_faults
from simulators.model import DeviceSpec, Message, Site, TruthRecord, to_epoch

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
REGIONS = (
    "shanghai-huangpu",
    "shanghai-xuhui",
    "shanghai-pudong",
    "shanghai-minhang",
    "shanghai-jingan",
    "shanghai-baoshan",
)
_SHORT = {
    "coldchain": "cc",
    "air": "air",
    "water": "wat",
    "pool": "pool",
    "wastewater": "ww",
    "waste": "mw",
}

Time = datetime | float


@dataclass(slots=True)
class SimResult:
    """Everything a finite run produced."""

    messages: list[Message] = field(default_factory=list)
    truth: list[TruthRecord] = field(default_factory=list)


def _epoch(t: Time) -> float:
    return to_epoch(t) if isinstance(t, datetime) else float(t)


def _profiles(domain: str, n: int) -> list[str]:
    """Profiles in the domain's proportions, spread evenly (largest deficit first)."""
    shares = MODELS[domain].profiles
    counts = dict.fromkeys((p for p, _ in shares), 0)
    out: list[str] = []
    for i in range(n):
        p = max(shares, key=lambda ps: ps[1] * (i + 1) - counts[ps[0]])[0]
        counts[p] += 1
        out.append(p)
    return out


class Fleet:
    """Simulated devices of one or more domains, deterministic for a seed.

    Args:
        specs: the devices.
        sites: the facilities they belong to.
        seed: seeds every random stream (per device, per purpose).
        faults: rates per device-hour by fault kind, or a spec string
            (`"excursion=0.01,offline=0.002"`).
        injections: faults at chosen times (`Injection.device` is an index into `specs`
            or a device id; None hits every device).
        natural: include natural episodes (cold boxes losing coverage in transport).
        interval_s: override every device's reporting interval (load mode).
    """

    def __init__(
        self,
        specs: Sequence[DeviceSpec],
        sites: Sequence[Site],
        *,
        seed: int,
        faults: Mapping[str, float] | str | None = None,
        injections: Sequence[Injection] = (),
        natural: bool = True,
        interval_s: float | None = None,
    ) -> None:
        self.specs = list(specs)
        self.sites = list(sites)
        self.seed = seed
        self.rates = parse_faults(faults) if isinstance(faults, str) else dict(faults or {})
        parse_faults(",".join(f"{k}={v}" for k, v in self.rates.items()))  # validates names
        for spec in self.specs:
            if not DEVICE_ID_RE.match(spec.device_id):
                raise ValueError(f"device id {spec.device_id!r} is not [A-Za-z0-9_-]{{1,64}}")
        by_device: dict[str, list[Injection]] = {s.device_id: [] for s in self.specs}
        for inj in injections:
            if inj.device is None:
                targets = list(by_device)
            elif isinstance(inj.device, int):
                targets = [self.specs[inj.device].device_id]
            else:
                if inj.device not in by_device:
                    raise ValueError(f"injection for unknown device {inj.device!r}")
                targets = [inj.device]
            for dev in targets:
                by_device[dev].append(inj)
        self.devices = [
            SimDevice(
                s,
                seed=seed,
                rates=self.rates,
                injections=by_device[s.device_id],
                natural=natural,
                interval_s=interval_s,
            )
            for s in self.specs
        ]

    def __len__(self) -> int:
        return len(self.devices)

    def run(self, start: Time, end: Time | None = None) -> Iterator[Item]:
        """Messages and truth records of every device, merged in order of `at` (ties in
        device order). Unbounded when `end` is None."""
        t0 = _epoch(start)
        t1 = None if end is None else _epoch(end)
        streams = [d.run(t0, t1) for d in self.devices]
        return heapq.merge(*streams, key=lambda item: item.at)

    def simulate(self, start: Time, end: Time) -> SimResult:
        """Run from `start` to `end` and collect everything (for tests and tools)."""
        result = SimResult()
        for item in self.run(start, end):
            if isinstance(item, Message):
                result.messages.append(item)
            else:
                result.truth.append(item)
        return result


def build_fleet(
    domain: str,
    n: int,
    seed: int = 0,
    faults: Mapping[str, float] | str | None = None,
    *,
    prefix: str = "sim",
    profile: str | None = None,
    injections: Sequence[Injection] = (),
    natural: bool = True,
    interval_s: float | None = None,
) -> Fleet:
    """`n` devices of `domain` ("all" spreads them over every domain).

    Device ids are `{prefix}-{short domain}-{i:05d}`; sites group a few devices each,
    spread over a handful of regions. `profile` forces one profile for every device.
    """
    domains = list(DOMAINS) if domain == "all" else [domain]
    for d in domains:
        if d not in MODELS:
            raise ValueError(f"unknown domain {d!r}; known: {', '.join(DOMAINS)}, all")
    if n < 0:
        raise ValueError("n must be >= 0")
    counts = {
        d: n // len(domains) + (1 if i < n % len(domains) else 0) for i, d in enumerate(domains)
    }
    specs: list[DeviceSpec] = []
    sites: list[Site] = []
    for d, count in counts.items():
        model = MODELS[d]
        if profile is not None and profile not in dict(model.profiles):
            raise ValueError(f"profile {profile!r} is not one of {d}'s: {dict(model.profiles)}")
        profiles = [profile] * count if profile else _profiles(d, count)
        short = _SHORT[d]
        for i, p in enumerate(profiles):
            j = i // model.devices_per_site
            site_id = f"{prefix}-{short}-site-{j:04d}"
            region = REGIONS[(j + len(sites)) % len(REGIONS)]
            if not sites or sites[-1].site_id != site_id:
                sites.append(
                    Site(site_id, f"Simulated {model.site_kind} {j}", model.site_kind, region)
                )
            region = sites[-1].region
            interval = int(interval_s) if interval_s else model.default_interval_s[p]
            specs.append(
                DeviceSpec(
                    device_id=f"{prefix}-{short}-{i:05d}",
                    domain=d,
                    profile=p,
                    site_id=site_id,
                    region=region,
                    expected_interval_s=max(1, interval),
                    name=f"Simulated {d} {p} {i}",
                )
            )
    return Fleet(
        specs,
        sites,
        seed=seed,
        faults=faults,
        injections=injections,
        natural=natural,
        interval_s=interval_s,
    )
