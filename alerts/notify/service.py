"""The Notifier: reads `alert_events` as an outbox, schedules notifications, delivers
them with retries and fallbacks, and records every step in the ledger and on the
alert's timeline.

    async with Notifier(dsn=dsn) as notifier:
        await notifier.run()              # the service
        report = await notifier.run_once(now)   # finite mode (tests)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime, timedelta
from types import TracebackType

import psycopg
from pydantic import ValidationError

from alerts.notify import config_store, planner, store
from alerts.notify.channels import ChannelSet
from alerts.notify.config import NotifyConfig
from alerts.notify.context import NotifyStats, Pass, RunReport
from alerts.notify.decide import Backoff, Cursor, advance_cursor
from alerts.notify.delivery import Deliverer

logger = logging.getLogger(__name__)

# Event kinds the notifier acts on. Its own timeline rows (notified, reminded,
# escalated_notify, silenced, notify_failed) are passed over, so they never re-trigger
# a notification.
ACT_KINDS = frozenset({"fired", "escalated", "acknowledged", "resolved"})
# The shortest pause between passes, so a due time that stays in the past cannot spin.
MIN_WAIT_S = 0.05


class Notifier:
    """The notification service; an async context manager.

    Args:
        dsn: libpq connection string of the healthmon database.
        name: cursor name; notifiers sharing a name share the work (rows are locked).
        poll_interval_s: the fallback scan when no NOTIFY arrives.
        gap_grace_s: how long a missing event id holds the cursor (an uncommitted insert).
        backoff: overrides the configured retry backoff (tests shrink it).
        rng: randomness for the jitter.
        batch_limit: events read per outbox page; notifications sent per round.
        send_concurrency: deliveries in flight at once.
    """

    def __init__(
        self,
        *,
        dsn: str,
        name: str = "default",
        poll_interval_s: float = 5.0,
        gap_grace_s: float = 30.0,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
        batch_limit: int = 500,
        send_concurrency: int = 16,
    ) -> None:
        if poll_interval_s <= 0 or batch_limit <= 0 or send_concurrency <= 0:
            raise ValueError("poll_interval_s, batch_limit and send_concurrency must be positive")
        self._dsn = dsn
        self.name = name
        self._poll_interval_s = poll_interval_s
        self._gap_grace_s = gap_grace_s
        self._backoff_override = backoff
        self._rng = rng or random.Random()
        self._batch_limit = batch_limit
        self._send_concurrency = send_concurrency
        self._conn: store.Conn | None = None
        self._channels: ChannelSet | None = None
        self._deliverer: Deliverer | None = None
        self._cfg = NotifyConfig()
        self._cfg_version: str | None = None
        self._gaps: dict[int, datetime] = {}
        self._wake = asyncio.Event()
        self.stats = NotifyStats()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Notifier:
        self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        try:
            _, cfg = await config_store.load_config(self._conn)
            # The HTTP/SMTP/MQTT timeout is read at start; a reload keeps it.
            self._channels = ChannelSet(timeout_s=cfg.delivery.timeout_s)
            await self._channels.__aenter__()
            self._deliverer = Deliverer(
                self._channels, concurrency=self._send_concurrency, batch_limit=self._batch_limit
            )
            await self._reload(force=True)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        n = await store.requeue_stale_sent(self._conn)
        if n:
            logger.warning("requeued %d notifications whose outcome a restart lost", n)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._channels is not None:
            await self._channels.__aexit__(et, e, tb)
            self._channels = self._deliverer = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def conn(self) -> store.Conn:
        if self._conn is None:
            raise RuntimeError("Notifier used outside `async with`")
        return self._conn

    @property
    def config(self) -> NotifyConfig:
        return self._cfg

    async def _reload(self, *, force: bool = False) -> None:
        version = await config_store.config_version(self.conn)
        if not force and version == self._cfg_version:
            return
        try:
            self._cfg_version, self._cfg = await config_store.load_config(self.conn)
        except ValidationError as exc:  # written by hand around `notify load`: keep the old
            logger.error("stored notification config %s is invalid, keeping %s: %s",
                         version, self._cfg_version, exc)  # fmt: skip
            self._cfg_version = version
            return
        assert self._channels is not None
        await self._channels.retain_only({c.id for c in self._cfg.channels})
        logger.info("notification config %s loaded", self._cfg_version)

    def _backoff(self) -> Backoff:
        return self._backoff_override or Backoff.from_delivery(self._cfg.delivery)

    # ------------------------------------------------------------ the service loop

    async def run(self) -> None:
        """Run until cancelled: woken by NOTIFY, else every `poll_interval_s`."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._listen_loop(), name="alerts.notify.listen")
            tg.create_task(self._work_loop(), name="alerts.notify.work")

    async def _listen_loop(self) -> None:
        backoff, attempt = Backoff(base_s=0.5, cap_s=30.0), 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as c:
                    await c.execute(f"LISTEN {store.EVENTS_CHANNEL}")
                    await c.execute(f"LISTEN {store.CONFIG_CHANNEL}")
                    attempt = 0
                    self._wake.set()  # anything committed while we were not listening
                    async for _ in c.notifies():
                        self._wake.set()
            except psycopg.OperationalError as exc:
                attempt += 1
                delay = backoff.delay_s(attempt, self._rng)
                logger.warning("notify listener lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    async def _work_loop(self) -> None:
        backoff, attempt = Backoff(base_s=0.5, cap_s=30.0), 0
        while True:
            self._wake.clear()
            try:
                report = await self.run_once(datetime.now(UTC))
                attempt = 0
            except psycopg.Error as exc:
                # Heal at run time: an outage (or a statement failing on odd data) is
                # retried with backoff; every step's transaction was rolled back.
                attempt += 1
                delay = backoff.delay_s(attempt, self._rng)
                logger.warning("notifier database error (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                if self._conn is None or self._conn.closed or self._conn.broken:
                    await self._reconnect()
                continue
            timeout = self._poll_interval_s
            if report.next_due_at is not None:
                due_in = (report.next_due_at - datetime.now(UTC)).total_seconds()
                timeout = max(MIN_WAIT_S, min(timeout, due_in))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _reconnect(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        try:
            self._conn = await psycopg.AsyncConnection.connect(self._dsn, autocommit=True)
        except psycopg.OperationalError as exc:
            logger.warning("notifier reconnect failed: %s", exc)

    # ------------------------------------------------------------ one pass

    async def run_once(self, now: datetime) -> RunReport:
        """One full pass at `now`: outbox, schedule, grouping, delivery. Finite; for
        tests drive it with explicit (future) `now`s."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        r = RunReport()
        await self._reload()
        p = Pass(self.conn, self._cfg, self._backoff(), self._rng)
        await self._process_outbox(p, now, r)
        sched_due = await planner.schedule(p, now, r)
        await planner.flush_batches(p, now, r)
        assert self._deliverer is not None
        await self._deliverer.deliver(p, now, r)
        times = await store.next_times(self.conn)
        if sched_due is not None:
            times.append(sched_due)
        if self._gaps:
            times.append(min(self._gaps.values()) + timedelta(seconds=self._gap_grace_s))
        r.next_due_at = min(times) if times else None
        self.stats.add(r)
        return r

    # ------------------------------------------------------------ outbox

    async def _process_outbox(self, p: Pass, now: datetime, r: RunReport) -> None:
        while True:
            async with self.conn.transaction():
                base = await store.lock_cursor(self.conn, self.name)
                cursor = Cursor(base.last_id, base.processed_above, self._gaps)
                rows = await store.fetch_events(self.conn, cursor, self._batch_limit)
                alerts = await store.fetch_alerts(
                    self.conn, {e["alert_id"] for e in rows if e["kind"] in ACT_KINDS}
                )
                for ev in rows:
                    if ev["kind"] in ACT_KINDS and ev["alert_id"] in alerts:
                        r.events += 1
                        await planner.on_event(p, ev, alerts[ev["alert_id"]], now, r)
                cursor = advance_cursor(cursor, [e["id"] for e in rows], now, self._gap_grace_s)
                self._gaps = dict(cursor.gaps)
                await store.save_cursor(self.conn, self.name, cursor, now)
            if len(rows) < self._batch_limit:
                return
