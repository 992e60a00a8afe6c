"""Plays a fleet's message stream onto the broker: accelerated, real time, or at a fixed
total rate, writing truth records as they are finalised.

The pacing here is the only place that looks at the wall clock; the fleet below it only
knows simulated time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from simulators.device import Item
from simulators.model import Message, TruthRecord
from simulators.transport import MqttTransport

logger = logging.getLogger(__name__)

_REPORT_EVERY_S = 10.0


@dataclass(slots=True)
class RunStats:
    """What one run did."""

    messages: int = 0
    truth_records: int = 0
    elapsed_s: float = 0.0
    sim_end: float | None = None  # `at` of the last item played
    stopped: bool = False  # ended by `stop`, not by running out of items

    @property
    def rate_per_s(self) -> float:
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0


def play(
    items: Iterable[Item],
    send: Callable[[Message], None],
    *,
    speed: float | None = None,
    rate: float | None = None,
    sim_start: float | None = None,
    truth: Callable[[TruthRecord], None] | None = None,
    stop: threading.Event | None = None,
    max_messages: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> RunStats:
    """Send every message of `items` through `send`, paced.

    Args:
        speed: simulated seconds per wall second (1 is real time); None: as fast as possible.
        rate: instead of `speed`, a fixed total rate in messages per second (load mode).
        sim_start: the simulated time that corresponds to the moment `play` starts
            (default: the first item's `at`).
        truth: receives each truth record when it is final.
        stop: set it to end the run early (checked between messages and while waiting).
        max_messages: stop after this many messages (finite mode for tests).
    """
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive")
    if rate is not None and rate <= 0:
        raise ValueError("rate must be positive")
    stop = stop or threading.Event()
    stats = RunStats()
    wall0 = clock()
    next_report = wall0 + _REPORT_EVERY_S
    for item in items:
        if stop.is_set():
            stats.stopped = True
            break
        if isinstance(item, TruthRecord):
            stats.truth_records += 1
            if truth is not None:
                truth(item)
            continue
        if sim_start is None:
            sim_start = item.at
        due: float | None = None
        if rate is not None:
            due = wall0 + stats.messages / rate
        elif speed is not None:
            due = wall0 + (item.at - sim_start) / speed
        if due is not None:
            delay = due - clock()
            if delay > 0 and stop.wait(delay):
                stats.stopped = True
                break
        send(item)
        stats.messages += 1
        stats.sim_end = item.at
        now = clock()
        if now >= next_report:
            next_report = now + _REPORT_EVERY_S
            logger.info(
                "simulated %d messages, %.0f/s", stats.messages, stats.messages / (now - wall0)
            )
        if max_messages is not None and stats.messages >= max_messages:
            break
    stats.elapsed_s = clock() - wall0
    return stats


def publish_sync(
    items: Iterable[Item],
    transport: MqttTransport,
    **kwargs: object,
) -> RunStats:
    """`play` onto an open transport, then wait for the broker's acknowledgements."""
    stats = play(items, transport.send, **kwargs)  # type: ignore[arg-type]
    if not transport.flush(30.0):
        logger.warning("not every publish was acknowledged within 30 s")
    return stats


async def publish(
    items: Iterable[Item],
    transport: MqttTransport,
    *,
    speed: float | None = None,
    rate: float | None = None,
    sim_start: float | None = None,
    truth: Callable[[TruthRecord], None] | None = None,
    max_messages: int | None = None,
) -> RunStats:
    """`publish_sync` in a worker thread; cancelling the task stops the run."""
    stop = threading.Event()
    task = asyncio.create_task(
        asyncio.to_thread(
            publish_sync,
            items,
            transport,
            speed=speed,
            rate=rate,
            sim_start=sim_start,
            truth=truth,
            stop=stop,
            max_messages=max_messages,
        ),
        name="simulators.publish",
    )
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.wait([task])
        raise
