"""The alert engine: runs the pure evaluators inside the ingest writer's transaction and on
a timer, keeps rule state in `rule_state`, and opens, escalates and resolves alerts.

    writer transaction: ... INSERT readings RETURNING -> AlertEngine.on_batch(conn, batch, now)
    own task `alerts.tick_loop`: AlertEngine.tick(conn, now) every `tick_interval_s`
    own task `alerts.rules_listener`: LISTEN healthmon_rules -> reload the rules

Per subject ("device:<id>", "bag:<id>") a transaction-scoped advisory lock, taken in sorted
order, serialises workers sharing a subscription; the state rows are read after the lock,
so the second worker sees what the first committed. The unique indexes on `alerts` make a
second open episode impossible even so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self
from uuid import UUID

import psycopg

from alerts import store
from alerts.actions import Action, Escalate, Fire, Inputs, Resolve, dt_of, ts_of
from alerts.evaluate import evaluate, no_data_due, on_time
from alerts.packs import default_rules
from alerts.rules import (
    BAG_KINDS,
    CumulativeRule,
    NoDataRule,
    RateRule,
    RuleBase,
    SiteSilenceRule,
    ThresholdRule,
)
from alerts.store import AlertContext
from alerts.waste import Member, site_verdict
from ingest import DeviceInfo, EvalBatch, Event, Reading

logger = logging.getLogger(__name__)

_VALUE_KINDS = frozenset({"threshold", "cumulative", "rate"})
_FORGET_BAGS_AFTER = timedelta(days=7)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class EngineCounters:
    """Plain counters, exported at /metrics by whoever composes the service."""

    batches: int = 0
    evaluations: int = 0
    fired: int = 0
    escalated: int = 0
    resolved: int = 0
    retrospective: int = 0
    replays_ignored: int = 0
    rule_errors: int = 0
    ticks: int = 0
    tick_errors: int = 0
    rule_reloads: int = 0
    site_alerts: int = 0
    held_back: int = 0
    by_rule: dict[str, int] = field(default_factory=dict)


def _device_info(row: dict[str, Any]) -> DeviceInfo:
    return DeviceInfo(
        device_id=row["device_id"],
        domain=row["domain"],
        site_id=row["site_id"],
        region=row["region"],
        profile=row["profile"] or "",
        expected_interval_s=int(row["expected_interval_s"]),
        enabled=bool(row["enabled"]),
    )


def _ctx(dev: DeviceInfo) -> AlertContext:
    return AlertContext(dev.device_id, dev.site_id, dev.region, dev.domain)


def _relevant(rule: RuleBase, inp: Inputs) -> bool:
    """Does this batch feed the rule at all (skip loading its state otherwise)?"""
    if rule.kind in _VALUE_KINDS:  # type: ignore[attr-defined]
        metric = rule.metric  # type: ignore[attr-defined]
        return any(r.metric == metric for r in inp.readings)
    if rule.kind == "stuck":  # type: ignore[attr-defined]
        return bool(inp.readings)
    if rule.kind == "sensor_fault":  # type: ignore[attr-defined]
        return bool(inp.readings or inp.faults)
    return bool(rule.kind == "no_data")  # type: ignore[attr-defined]


def _late_readings(rule: RuleBase, st: dict[str, Any], inp: Inputs) -> list[datetime]:
    """Event times of readings this single-metric rule's state has already moved past."""
    last = st.get("last")
    if last is None or rule.kind not in _VALUE_KINDS:  # type: ignore[attr-defined]
        return []
    metric = rule.metric  # type: ignore[attr-defined]
    return [
        r.ts
        for r in inp.readings
        if r.metric == metric and r.value is not None and ts_of(r.ts) <= last
    ]


def _lookback_s(rule: RuleBase) -> float:
    """How much history before the first late reading a replay needs."""
    if isinstance(rule, ThresholdRule):
        return rule.for_s + (rule.mean_s or 0) + rule.clear_for_s + 600
    if isinstance(rule, CumulativeRule | RateRule):
        return rule.window_s
    return 3600.0


@dataclass(frozen=True, slots=True)
class _Replay:
    rule: RuleBase
    subject: str
    ctx: AlertContext
    device: DeviceInfo
    first_late: datetime
    until: datetime
    active: bool


class AlertEngine:
    """The alert engine. An async context manager; the constructor only stores arguments.

    Args:
        dsn: libpq URL for the engine's own connections (rule loading, the LISTEN for rule
            changes, the tick loop). None: no background work, rules from `rules`.
        rules: use these rules instead of the `rules` table (tests, tools).
        tick_interval_s: how often the background task runs `tick`.
        late_tolerance_s: an alert detected more than this after the event time at which
            its condition became true is flagged `retrospective`.
        seed_defaults: load the default packs when the `rules` table is empty at start.
        background: start the tick loop and the rules listener (needs `dsn`).
        clock: wall-clock source for the background tick (tests may shrink it).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        rules: Sequence[RuleBase] | None = None,
        tick_interval_s: float = 15.0,
        late_tolerance_s: float = 300.0,
        seed_defaults: bool = True,
        background: bool = True,
        max_due_per_tick: int = 2000,
        listen_poll_s: float = 1.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if tick_interval_s <= 0:
            raise ValueError("tick_interval_s must be positive")
        self._dsn = dsn
        self._fixed = rules is not None
        self._tick_interval_s = tick_interval_s
        self._late_tolerance_s = late_tolerance_s
        self._seed = seed_defaults
        self._background = background and dsn is not None
        self._max_due = max_due_per_tick
        self._listen_poll_s = listen_poll_s
        self._backoff = (backoff_base_s, backoff_cap_s)
        self._clock = clock
        self.counters = EngineCounters()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_forget: datetime | None = None
        self._set_rules(list(rules or []))

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._dsn is not None and not self._fixed:
            # Fail fast: a bad DSN or an unmigrated database stops the start here.
            async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                if self._seed:
                    await seed_defaults(conn)
                self._set_rules(await store.load_rules(conn))
        if self._background:
            self._tg = asyncio.TaskGroup()
            await self._tg.__aenter__()
            self._tasks.append(self._tg.create_task(self._tick_loop(), name="alerts.tick_loop"))
            if not self._fixed:
                self._tasks.append(
                    self._tg.create_task(self._listen_loop(), name="alerts.rules_listener")
                )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tg is not None:
            tg, self._tg = self._tg, None
            await tg.__aexit__(None, None, None)
        self._tasks.clear()

    # ------------------------------------------------------------ rules

    @property
    def rules(self) -> list[RuleBase]:
        return list(self._rules)

    def _set_rules(self, rules: Sequence[RuleBase]) -> None:
        self._rules = [r for r in rules if r.enabled]
        self._by_id = {r.rule_id: r for r in self._rules}
        self._device_rules = [
            r
            for r in self._rules
            if r.kind not in BAG_KINDS and r.kind != "site_silence"  # type: ignore[attr-defined]
        ]
        self._bag_rules = [r for r in self._rules if r.kind in BAG_KINDS]  # type: ignore[attr-defined]
        sites = [r for r in self._rules if isinstance(r, SiteSilenceRule)]
        self._site_rule: SiteSilenceRule | None = sites[0] if sites else None

    async def reload_rules(self, conn: store.Conn) -> int:
        """Reload the enabled rules from the `rules` table; returns how many."""
        self._set_rules(await store.load_rules(conn))
        self.counters.rule_reloads += 1
        logger.info("alert rules reloaded: %d enabled", len(self._rules))
        return len(self._rules)

    # ------------------------------------------------------------ the stream

    async def on_batch(self, conn: store.Conn, batch: EvalBatch, now: datetime) -> None:
        """Evaluate what one write newly stored, inside the writer's transaction.

        Args:
            conn: the writer's connection, inside its (open) transaction.
            batch: readings, events, statuses, sensor faults newly stored, with devices.
            now: the wall-clock time of this write (the detection time).
        """
        self.counters.batches += 1
        inputs: dict[str, Inputs] = defaultdict(Inputs)
        for r in batch.readings:
            inputs[r.device_id].readings.append(r)
        for f in batch.faults:
            if f.device_id:
                inputs[f.device_id].faults.append(f)
        for e in batch.events:
            inputs[e.device_id].events.append(e)
        for s in batch.statuses:
            inputs[s.device_id].statuses.append(s)
        if not inputs:
            return
        devices = dict(batch.devices)
        # Unknown here, or known without the site's region (alerts are filtered by region).
        missing = [
            d
            for d in inputs
            if d not in devices or (devices[d].region is None and devices[d].site_id)
        ]
        if missing:
            rows = await store.device_rows(conn, missing)
            for d, row in rows.items():
                known = devices.get(d)
                devices[d] = (
                    _device_info(row)
                    if known is None
                    else dataclasses.replace(known, region=row["region"])
                )

        work: list[tuple[RuleBase, str, Inputs, AlertContext]] = []
        bags: dict[str, tuple[list[Event], DeviceInfo]] = {}
        for dev_id, inp in inputs.items():
            dev = devices.get(dev_id)
            if dev is None or not dev.enabled:
                continue
            inp.device = dev
            ctx = _ctx(dev)
            for rule in self._device_rules:
                if rule.applies_to(dev) and _relevant(rule, inp):
                    work.append((rule.for_profile(dev.profile), f"device:{dev_id}", inp, ctx))
            for e in inp.events:
                if e.bag_id:
                    bags.setdefault(e.bag_id, ([], dev))[0].append(e)
        for bag_id, (events, dev) in bags.items():
            for rule in self._bag_rules:
                if rule.applies_to(dev):
                    bag_in = Inputs(device=dev, events=events)
                    work.append((rule.for_profile(dev.profile), f"bag:{bag_id}", bag_in, _ctx(dev)))
        if not work:
            return

        await store.lock_subjects(conn, (w[1] for w in work))
        states = await store.load_state_rows(conn, [(w[0].rule_id, w[1]) for w in work])
        saves: list[tuple[str, str, dict[str, Any] | str, datetime | None]] = []
        results: list[tuple[RuleBase, str, AlertContext, list[Action]]] = []
        offline_due: list[tuple[str, str]] = []
        replays: list[_Replay] = []
        for rule, subject, inp, ctx in work:
            # Each (rule, subject) occurs once per batch: the loaded dict is ours to change.
            st, due = states.get((rule.rule_id, subject), ({}, None))
            before = store.dump_state(st) if st else None
            late = _late_readings(rule, st, inp)
            if late:
                assert inp.device is not None
                replays.append(_Replay(rule, subject, ctx, inp.device, min(late),
                                       dt_of(st["last"]), bool(st.get("active"))))  # fmt: skip
            try:
                out = evaluate(rule, st, inp, now)
            except Exception:  # a faulty rule must not stop the others (nor the write)
                self.counters.rule_errors += 1
                logger.exception("rule %s failed on %s", rule.rule_id, subject)
                continue
            self.counters.evaluations += 1
            if subject.startswith("bag:"):
                out.state["dev"] = ctx.device_id
            after = store.dump_state(out.state)
            if after != before or out.due != due:  # only what changed is written back
                saves.append((rule.rule_id, subject, after, out.due))
            if out.actions:
                results.append((rule, subject, ctx, out.actions))
            if isinstance(rule, NoDataRule) and out.state.get("lwt") is not None:
                offline_due.append((rule.rule_id, subject))  # a Last Will: offline at once
        await store.save_states(conn, saves, now)
        back_sites: set[str] = set()
        for rule, subject, ctx, actions in results:
            await self._apply(conn, rule, subject, ctx, actions, now)
            if (
                isinstance(rule, NoDataRule)
                and ctx.site_id
                and any(isinstance(a, Resolve) for a in actions)
            ):
                back_sites.add(ctx.site_id)
        for rp in replays:
            await self._replay(conn, rp, now)
        if offline_due:
            await self._offline(conn, offline_due, now)
        if back_sites and self._site_rule is not None:
            for site_alert, site_id in await store.open_site_alerts(conn, self._site_rule.rule_id):
                if site_id in back_sites:
                    await self._sweep_site(conn, site_alert, site_id, now)

    async def _apply(
        self,
        conn: store.Conn,
        rule: RuleBase,
        subject: str,
        ctx: AlertContext,
        actions: Sequence[Action],
        now: datetime,
        suppressed_by: UUID | None = None,
    ) -> None:
        c = self.counters
        for a in actions:
            if isinstance(a, Fire):
                retro = (now - a.detected_ts).total_seconds() > self._late_tolerance_s
                _aid, created = await store.open_alert(
                    conn, rule, subject, ctx, a, now,
                    retrospective=retro, suppressed_by=suppressed_by,
                )  # fmt: skip
                if created:
                    c.fired += 1
                    c.retrospective += retro
                    c.held_back += suppressed_by is not None
                    c.by_rule[rule.rule_id] = c.by_rule.get(rule.rule_id, 0) + 1
                else:
                    c.replays_ignored += 1
            elif isinstance(a, Escalate):
                c.escalated += (
                    await store.escalate_alert(conn, rule.rule_id, subject, a, now) is not None
                )
            elif isinstance(a, Resolve):
                c.resolved += (
                    await store.resolve_alert(conn, rule.rule_id, subject, a, now) is not None
                )

    async def _replay(self, conn: store.Conn, rp: _Replay, now: datetime) -> None:
        """Late readings (older than what the rule state has seen, e.g. a backlog uploaded
        after live data resumed): re-evaluate that stretch of stored history from a fresh
        state and record the episodes it contains as resolved retrospective alerts. The
        live state and its open episode are left as they are."""
        rule = rp.rule
        metric: str = rule.metric  # type: ignore[attr-defined]
        start = rp.first_late - timedelta(seconds=_lookback_s(rule))
        rows = await store.history(conn, rp.device.device_id, metric, start, rp.until)
        readings = [Reading(ts, rp.device.device_id, metric, v) for ts, v in rows]
        out = evaluate(rule, {}, Inputs(device=rp.device, readings=readings), now)
        episodes: list[list[Any]] = []  # [fire, severity, end]
        for a in out.actions:
            if isinstance(a, Fire):
                episodes.append([a, a.severity, None])
            elif isinstance(a, Escalate) and episodes:
                episodes[-1][1] = a.severity
            elif isinstance(a, Resolve) and episodes:
                episodes[-1][2] = a.at
        for fire, severity, end in episodes:
            if fire.detected_ts < rp.first_late:
                continue  # complete before the late data: the live state judged it already
            if end is None:
                if rp.active:
                    continue  # it runs into the episode that is open now
                end = rp.until  # back within limits by the live state's next reading
            aid = await store.record_past_episode(
                conn, rule, rp.subject, rp.ctx, fire, severity, end, now
            )
            if aid is not None:
                self.counters.fired += 1
                self.counters.retrospective += 1
                self.counters.resolved += 1

    # ------------------------------------------------------------ time-driven

    async def tick(self, conn: store.Conn, now: datetime) -> None:
        """Evaluate time-driven rules whose due time has passed (no data, Last Will, waste
        storage time, bags never sealed/stored), then site silence. Opens its own
        transaction (a savepoint when the caller already has one)."""
        self.counters.ticks += 1
        async with conn.transaction():
            keys = await store.due_states(conn, now, self._max_due)
            if keys:
                await self._run_due(conn, keys, now)
            if self._site_rule is not None:
                for site_alert, site_id in await store.open_site_alerts(
                    conn, self._site_rule.rule_id
                ):
                    await self._sweep_site(conn, site_alert, site_id, now)
            if self._last_forget is None or now - self._last_forget > timedelta(hours=1):
                self._last_forget = now
                await store.forget_finished_bags(conn, now - _FORGET_BAGS_AFTER)

    async def _run_due(self, conn: store.Conn, keys: list[tuple[str, str]], now: datetime) -> None:
        await store.lock_subjects(conn, (s for _, s in keys))
        states = await store.load_states(conn, keys)  # re-read under the locks
        dev_of = {
            k: (k[1].split(":", 1)[1] if k[1].startswith("device:") else st.get("dev"))
            for k, st in states.items()
        }
        devs = await store.device_rows(conn, (d for d in dev_of.values() if d))
        offline: list[tuple[str, str]] = []
        drop: list[tuple[str, str]] = []
        saves: list[tuple[str, str, dict[str, Any], datetime | None]] = []
        results: list[tuple[RuleBase, str, AlertContext, list[Action]]] = []
        for key, st in states.items():
            rule = self._by_id.get(key[0])
            row = devs.get(dev_of[key] or "")
            if rule is None or row is None or not row["enabled"]:
                if not st.get("active"):
                    drop.append(key)  # rule removed or device gone: nothing left to watch
                continue
            if isinstance(rule, NoDataRule):
                offline.append(key)
                continue
            dev = _device_info(row)
            rule = rule.for_profile(dev.profile)
            out = on_time(rule, st, now)
            saves.append((key[0], key[1], out.state, out.due))
            if out.actions:
                results.append((rule, key[1], _ctx(dev), out.actions))
        await store.delete_states(conn, drop)
        await store.save_states(conn, saves, now)
        for rule, subject, ctx, actions in results:
            await self._apply(conn, rule, subject, ctx, actions, now)
        if offline:
            await self._offline(conn, offline, now)

    async def _offline(self, conn: store.Conn, keys: list[tuple[str, str]], now: datetime) -> None:
        """Devices whose no-data rule is due: one site alert when their whole site is
        silent (their offline alerts held back under it), else each its own alert."""
        states = await store.load_states(conn, keys)
        devs = await store.device_rows(conn, (k[1].split(":", 1)[1] for k in keys))
        site_rule = self._site_rule
        by_site: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for key in keys:
            row = devs.get(key[1].split(":", 1)[1])
            if key not in states or row is None:
                continue
            if site_rule is not None and row["site_id"] and site_rule.applies_to(_device_info(row)):
                by_site[(row["site_id"], key[0])].append(key)
            else:
                await self._fire_offline(conn, key, states[key], _device_info(row), now, None)
        for (site_id, rule_id), site_keys in by_site.items():
            assert site_rule is not None
            rule = self._by_id.get(rule_id)
            if not isinstance(rule, NoDataRule):
                continue
            members = await self._members(conn, site_id, rule)
            silent, defer = site_verdict(members, now, site_rule.min_devices)
            site_alert = await store.open_alert_id(conn, site_rule.rule_id, f"site:{site_id}")
            if silent and site_alert is None:
                site_alert = await self._open_site_alert(conn, site_rule, site_id, members, now)
                if site_alert is not None:
                    await store.suppress_open(conn, rule_id, site_id, site_alert, now)
            for key in site_keys:
                if key[1].split(":", 1)[1] in defer:
                    continue  # maybe the whole site is going down: decide on a later tick
                dev = _device_info(devs[key[1].split(":", 1)[1]])
                hold = site_alert if silent else None
                await self._fire_offline(conn, key, states[key], dev, now, hold)

    async def _fire_offline(
        self,
        conn: store.Conn,
        key: tuple[str, str],
        st: dict[str, Any],
        dev: DeviceInfo,
        now: datetime,
        suppressed_by: UUID | None,
    ) -> None:
        rule = self._by_id.get(key[0])
        if rule is None:
            return
        rule = rule.for_profile(dev.profile)
        out = on_time(rule, st, now)
        await store.save_states(conn, [(key[0], key[1], out.state, out.due)], now)
        await self._apply(conn, rule, key[1], _ctx(dev), out.actions, now, suppressed_by)

    async def _members(self, conn: store.Conn, site_id: str, rule: NoDataRule) -> list[Member]:
        out: list[Member] = []
        for m in await store.site_members(conn, site_id, rule.rule_id):
            st = m["state"] or {}
            r = rule.for_profile(m["profile"] or "")
            assert isinstance(r, NoDataRule)
            seen = st.get("seen")
            if seen is None and m["last_seen"] is not None:
                seen = ts_of(m["last_seen"])
                st = {**st, "seen": seen, "iv": m["expected_interval_s"]}
            due = no_data_due(r, st)
            iv = float(st.get("iv") or m["expected_interval_s"])
            out.append(
                Member(m["device_id"], seen, None if due is None else ts_of(due),
                       bool(st.get("active")), iv)
            )  # fmt: skip
        return out

    async def _open_site_alert(
        self,
        conn: store.Conn,
        rule: SiteSilenceRule,
        site_id: str,
        members: list[Member],
        now: datetime,
    ) -> UUID | None:
        seen = [m.seen for m in members if m.seen is not None]
        dues = [m.due for m in members if m.due is not None]
        started = dt_of(max(seen)) if seen else now
        detected = dt_of(max(dues)) if dues else now
        msg = f"{rule.name or rule.rule_id}: all {len(members)} devices of site {site_id} silent"
        fire = Fire(started, detected, rule.severity, float(len(members)), None, None, msg)
        ctx = AlertContext(None, site_id, await store.site_region(conn, site_id), None)
        self.counters.site_alerts += 1
        aid, _created = await store.open_alert(
            conn, rule, f"site:{site_id}", ctx, fire, now, retrospective=False
        )
        return aid

    async def _sweep_site(
        self, conn: store.Conn, site_alert: UUID, site_id: str, now: datetime
    ) -> None:
        """Resolve a site alert once any of its devices is up again; the offline alerts
        still open then stand on their own (released)."""
        assert self._site_rule is not None
        rule = self._by_id.get("device.offline")
        if not isinstance(rule, NoDataRule):
            rule = next((r for r in self._rules if isinstance(r, NoDataRule)), None)
        members = await self._members(conn, site_id, rule) if rule is not None else []
        t = ts_of(now)
        up = [
            m for m in members
            if not m.offline and m.seen is not None and (m.due is None or t < m.due)
        ]  # fmt: skip
        if members and not up:
            return
        res = Resolve(now, float(len(up)), f"{len(up)} device(s) of site {site_id} reporting")
        subject = f"site:{site_id}"
        if await store.resolve_alert(conn, self._site_rule.rule_id, subject, res, now):
            self.counters.resolved += 1
        await store.release_suppressed(conn, site_alert, now)

    # ------------------------------------------------------------ background tasks

    def _delay(self, attempt: int) -> float:
        base, cap = self._backoff
        ceiling = min(cap, base * 2 ** min(attempt, 30))
        return random.uniform(ceiling / 2, ceiling)

    async def _tick_loop(self) -> None:
        assert self._dsn is not None
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    attempt = 0
                    while True:
                        try:
                            await self.tick(conn, self._clock())
                        except psycopg.OperationalError:
                            raise
                        except psycopg.Error:
                            self.counters.tick_errors += 1
                            logger.exception("alert tick failed")
                        await asyncio.sleep(self._tick_interval_s)
            except psycopg.OperationalError as exc:
                self.counters.tick_errors += 1
                delay = self._delay(attempt)
                attempt += 1
                logger.warning("alert tick: database unavailable (%s); retry in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _listen_loop(self) -> None:
        assert self._dsn is not None
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {store.RULES_CHANNEL}")
                    # Changes made while we were away: reload on every (re)connect.
                    await self.reload_rules(conn)
                    attempt = 0
                    while True:
                        got = False
                        async for _n in conn.notifies(timeout=self._listen_poll_s):
                            got = True
                        if got:
                            await self.reload_rules(conn)
            except psycopg.OperationalError as exc:
                delay = self._delay(attempt)
                attempt += 1
                logger.warning("rules listener: database unavailable (%s); retry in %.1f s",
                               exc, delay)  # fmt: skip
                await asyncio.sleep(delay)

    async def run_tick_once(self, now: datetime | None = None) -> None:
        """Finite mode: one tick on a fresh connection (tools and tests)."""
        assert self._dsn is not None
        async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
            await self.tick(conn, now or self._clock())


async def seed_defaults(conn: store.Conn) -> int:
    """Load the default packs when the `rules` table is empty; returns rules written."""
    async with conn.transaction():
        # Two engines starting at once: one seeds, the other then sees the rows.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('alerts:seed', 0))")
        if not await store.rules_empty(conn):
            return 0
        return await store.upsert_rules(conn, default_rules())
