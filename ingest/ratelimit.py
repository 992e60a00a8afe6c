"""Per-device token buckets: a flood from one device is rejected as `rate_limited`."""

from __future__ import annotations


class RateLimiter:
    """`allow(device_id, now_mono)` is pure bookkeeping over monotonic seconds."""

    def __init__(self, *, rate_per_s: float, burst: int, max_devices: int = 200_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_devices = max_devices
        self._buckets: dict[str, tuple[float, float]] = {}  # device -> (tokens, last)

    def allow(self, device_id: str, now_mono: float) -> bool:
        if self._rate <= 0:
            return True
        tokens, last = self._buckets.get(device_id, (self._burst, now_mono))
        tokens = min(self._burst, tokens + (now_mono - last) * self._rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        if len(self._buckets) >= self._max_devices and device_id not in self._buckets:
            self._buckets.clear()  # bounded memory: forgetting only ever lets more through
        self._buckets[device_id] = (tokens, now_mono)
        return ok
