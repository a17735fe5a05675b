"""The stream processor: reads both input topics in batches, applies, then commits offsets."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    RebalanceInProgressError,
)
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from worker import logs
from worker.adapters.kafka_admin import OffsetReader
from worker.adapters.kafka_connection import close_client, kafka_client_args
from worker.config import Settings
from worker.domain.account import Policy
from worker.entrypoints.stages import StageTrace
from worker.errors import ProducerStampedInputs, ShuttingDown, is_retriable
from worker.metrics import Metrics
from worker.retry import retry
from worker.service.alignment import Aligner
from worker.service.billing import BatchReport, apply_batch, earliest
from worker.service.inputs import input_problem, timestamp_problem
from worker.service.ports import Dead, Decoded, Encoder, InputRecord, Source, Store

_LOGGER = "worker.stream"
log = logs.get(_LOGGER)
Side = tuple[Source, int]
# The generation of a fetch during which a partition it read was revoked: never current.
_STALE = -1
# How long a discarded fetch waits for a partition's position before leaving it as it is.
_POSITION_WAIT_S = 1.0
# Records decoded between two yields to the event loop while a batch is in the database.
_DECODE_SLICE = 100
# Once the fetch ahead has records, how long each further fetch waits for more before it
# looks whether the batch in the database is done: the most it delays the next batch.
_AHEAD_POLL_MS = 5
# How often the input topics' partition counts are checked, waiting or consuming.
INPUT_CHECK_INTERVAL_S = 5.0


@dataclass
class _Fetched:
    """One fetch: its records decoded, and where every assigned side stood around it."""

    started: int  # assignment generation when the fetch began
    generation: int  # ... and just after its records were returned (_STALE: revoked meanwhile)
    rebalancing: bool  # a rebalance was under way just after they were returned
    decoded: list[Decoded | Dead]
    before: dict[Side, int]  # fetch position per side before the records were returned
    positions: dict[Side, int]  # ... and just after
    wall: float  # when they came, by the wall clock
    mono: float  # ... and by the monotonic one


class _Revocation(ConsumerRebalanceListener):  # type: ignore[misc]
    """Lets a rebalance wait until the batch in hand is applied and committed."""

    def __init__(
        self,
        lock: asyncio.Lock,
        metrics: Metrics,
        aligner: Aligner,
        committing: Callable[[], asyncio.Task[None] | None],
    ) -> None:
        self.lock = lock
        self.metrics = metrics
        self.aligner = aligner
        self.committing = committing
        # For /ready: a rebalance is under way until the next assignment arrives.
        self.rebalancing = True
        self.assigned_at = time.monotonic()
        # Bumped on every revocation: records returned before it never reach the aligner.
        self.generation = 0

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.rebalancing = True
        self.generation += 1
        async with self.lock:
            # The last batch applied has its offsets committed before its partitions go. Its
            # outcome is left to the stream, which awaits the commit before the next one.
            commit = self.committing()
            if commit is not None:
                await asyncio.wait([commit])
            # Buffered records were never committed; whoever owns them next reads them again.
            partitions = {tp.partition for tp in revoked}
            dropped = self.aligner.spans(partitions)
            self.aligner.drop(partitions)
            log.info(
                "partitions_revoked",
                partitions=sorted(str(tp) for tp in revoked),
                generation=self.generation,
                dropped=dropped,
            )

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.rebalancing = False
        self.assigned_at = time.monotonic()
        self.metrics.assigned.set(len(assigned))
        log.info(
            "partitions_assigned",
            partitions=sorted(str(tp) for tp in assigned),
            generation=self.generation,
        )


class StreamProcessor:
    """One consumer in the group; batch in, one transaction, commit `offset + 1`."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        decoder: Callable[[InputRecord], Decoded | Dead],
        encoder: Encoder,
        policy: Policy,
        metrics: Metrics,
        on_applied: Callable[[BatchReport], None] = lambda _: None,
    ) -> None:
        """`on_applied` runs right after a batch's database commit (e.g. to wake the relay)."""
        self.settings = settings
        self.store = store
        self.decoder = decoder
        self.encoder = encoder
        self.policy = policy
        self.metrics = metrics
        self.on_applied = on_applied
        self.sources: dict[str, Source] = {
            settings.topic_usage: "usage",
            settings.topic_account_events: "account",
        }
        self.lock = asyncio.Lock()
        self.aligner = Aligner(settings.align_max_wait_ms / 1000)
        # The offset commit of the last batch applied, in flight while the next one applies.
        self.commit_task: asyncio.Task[None] | None = None
        self.listener = _Revocation(self.lock, metrics, self.aligner, lambda: self.commit_task)
        self.consumer: AIOKafkaConsumer | None = None
        self.last_commit: dict[TopicPartition, float] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.topics: dict[Source, str] = {source: topic for topic, source in self.sources.items()}
        self.trace = StageTrace(metrics)
        self.inputs = OffsetReader(kafka_client_args(settings), settings.client_id + "-inputs")
        # For /ready: why the inputs cannot be consumed now (None: they can).
        self.input_problem: str | None = "input topics not checked yet"
        self.inputs_checked_at = 0.0
        self.throttled: set[TopicPartition] = set()  # paused by `_throttle`, resumed by it only

    def build_consumer(self) -> AIOKafkaConsumer:
        s = self.settings
        return AIOKafkaConsumer(
            **kafka_client_args(s),
            group_id=s.consumer_group,
            client_id=s.client_id,
            group_instance_id=s.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            # Range assignment keeps partition N of both input topics on one consumer.
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_records=s.batch_max_records,
            # The broker holds a fetch this long when it has nothing new for it; records that
            # arrive meanwhile for a partition left out of it (its previous records were still
            # buffered) wait for it to return, so a long wait is latency at everyday load.
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=3_000,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; the batch in hand is finished and committed first.
        While the inputs are missing or partitioned differently, wait (not ready) instead."""
        consumer = self.build_consumer()
        self.consumer = consumer
        try:
            await retry(
                "kafka_connect",
                consumer.start,
                stop,
                self.metrics,
                self.settings.retry_max_backoff_s,
                target=self.settings.kafka_bootstrap_servers,
            )
        except ShuttingDown:
            # Stopped before the broker answered: nothing was read, so nothing to commit.
            self.consumer = None
            try:
                await close_client(consumer)
            finally:
                await self.inputs.close()
            log.info("stream_stopped", note="stopped before the broker answered")
            return
        try:
            while not stop.is_set():
                if not await self._wait_for_inputs(stop):
                    break
                consumer.subscribe(list(self.sources), listener=self.listener)
                await self._consume(consumer, stop)
                if not stop.is_set():
                    # The inputs went wrong while running: leave the group until they are fixed.
                    consumer.unsubscribe()
                    async with self.lock:
                        self.aligner.clear()
        except ShuttingDown:
            log.warning("stopped_with_batch_uncommitted", note="it will be redelivered")
        finally:
            self.consumer = None
            try:
                await close_client(consumer)
            finally:
                await self.inputs.close()

    async def _check_inputs(self) -> str | None:
        """Ask the broker about the input topics; sets and returns `input_problem`."""
        counts = await self.inputs.partition_counts(list(self.sources))
        problem = input_problem(counts)
        if problem != self.input_problem:
            if problem is None:
                log.info("inputs_usable", partitions=counts)
            else:
                log.error("inputs_unusable", reason=problem)
        self.input_problem = problem
        self.inputs_checked_at = time.monotonic()
        return problem

    async def _check_timestamps(self) -> None:
        """Refuse input topics whose producers stamp the records (CreateTime): the record
        timestamp is the arrival that lateness is measured by. Unless allowed by setting."""
        if self.settings.allow_create_time_inputs:
            return
        types = await self.inputs.timestamp_types(list(self.sources))
        problem = timestamp_problem(types)
        if problem is not None:
            self.input_problem = problem
            raise ProducerStampedInputs(problem)
        unknown = sorted(topic for topic, kind in types.items() if kind is None)
        if unknown:
            log.warning(
                "inputs_timestamp_type_unknown",
                topics=unknown,
                note="the broker did not describe their configs (grant DescribeConfigs): "
                "their record timestamps are taken as arrivals unchecked",
            )

    async def _wait_for_inputs(self, stop: asyncio.Event) -> bool:
        """Until both input topics exist with one partition count; False if stopped first.
        An input topic stamped by its producers (CreateTime) stops the worker."""
        while not stop.is_set():
            try:
                if await self._check_inputs() is None:
                    await self._check_timestamps()
                    return True
            except ProducerStampedInputs:
                raise
            except Exception as exc:
                if not is_retriable(exc) and not isinstance(exc, KafkaError):
                    raise
                log.warning("inputs_check_failed", cause=type(exc).__name__, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=INPUT_CHECK_INTERVAL_S)
        return False

    async def _inputs_changed(self) -> bool:
        """Every `INPUT_CHECK_INTERVAL_S` while consuming: have the inputs become unusable?"""
        if time.monotonic() - self.inputs_checked_at < INPUT_CHECK_INTERVAL_S:
            return False
        try:
            return await self._check_inputs() is not None
        except Exception as exc:
            if not is_retriable(exc) and not isinstance(exc, KafkaError):
                raise
            self.inputs_checked_at = time.monotonic()
            return False  # the broker did not answer: the consumer finds out on its own

    async def _consume(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """The batch loop, until `stop` is set or the inputs become unusable."""
        ahead: asyncio.Task[list[_Fetched]] | None = None
        try:
            while not stop.is_set() and not await self._inputs_changed():
                fetches = await ahead if ahead is not None else [await self._fetch(consumer)]
                room = self.settings.batch_max_records - sum(len(f.decoded) for f in fetches)
                if ahead is not None and room > 0:
                    # What reached the consumer's buffer since the last fetch ahead: taken now,
                    # or it would wait for one more batch.
                    fetches.append(await self._fetch(consumer, timeout_ms=0, max_records=room))
                ahead = None
                async with self.lock:
                    discarded = False
                    for fetched in fetches:
                        if not discarded and self._current(fetched):
                            self._accept(consumer, fetched)
                            continue
                        # Read across a rebalance: whoever owns the partitions reads them again.
                        # What was read after a discarded fetch is read again with it.
                        discarded = True
                        log.info(
                            "fetch_discarded",
                            generation=fetched.generation,
                            current=self.listener.generation,
                            rebalancing=fetched.rebalancing,
                            records=_spans(fetched.decoded),
                        )
                        await self._read_again(consumer, fetched)
                    caught_up, behind = await self._other_sides(consumer)
                    ready = self.aligner.release(
                        caught_up, time.monotonic(), self.settings.batch_max_records, behind
                    )
                    self._throttle(consumer)
                    if ready:
                        self.trace.released(ready[0])
                        # Read and decode the next records while this batch is in the database;
                        # they reach the aligner only once it is committed.
                        applied = asyncio.Event()
                        ahead = asyncio.create_task(self._fetch_ahead(consumer, applied))
                        await self._handle(consumer, ready, self.aligner.pending(), stop, applied)
                    else:
                        await self._commit_settled(consumer, stop)
            async with self.lock:
                await self._committed()
        finally:
            if ahead is not None:
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
            if self.commit_task is not None:
                # Leaving on an error: the commit in flight still ends; its outcome is moot.
                await asyncio.gather(self.commit_task, return_exceptions=True)
                self.commit_task = None

    async def _fetch_ahead(
        self, consumer: AIOKafkaConsumer, applied: asyncio.Event
    ) -> list[_Fetched]:
        """Fetches while a batch is in the database, until it is applied or a batch's worth is
        in hand. Each takes what the consumer has buffered: the consumer fetches a partition
        again only once its buffered records are taken, so records that reach the broker late
        in the batch are read in time for the next one instead of the one after."""
        fetches = [await self._fetch(consumer)]
        room = self.settings.batch_max_records - len(fetches[-1].decoded)
        while room > 0 and not applied.is_set() and self._current(fetches[-1]):
            fetched = await self._fetch(consumer, timeout_ms=_AHEAD_POLL_MS, max_records=room)
            if fetched.decoded or not self._current(fetched):
                fetches.append(fetched)
                room -= len(fetched.decoded)
        return fetches

    def _current(self, fetched: _Fetched) -> bool:
        """Were the fetch's records and positions read under the current assignment?

        Not if a rebalance began or was under way when they were returned: aiokafka's
        getmany holds records back during a reassignment but returns {} when its wait times
        out, and the positions read then are the old assignment's, past records the
        revocation drops unapplied (that made them settled commits: a lost range)."""
        return fetched.generation == self.listener.generation and not fetched.rebalancing

    async def _read_again(self, consumer: AIOKafkaConsumer, fetched: _Fetched) -> None:
        """A fetch not handed on: where its partition is still assigned and its position past
        the fetch's first record, seek back to that record. Never forward (a seek back only
        reads again what event ids make harmless), so it is right whatever the assignment."""
        first: dict[TopicPartition, int] = {}
        for item in fetched.decoded:
            tp = TopicPartition(item.record.topic, item.record.partition)
            first[tp] = min(first.get(tp, item.record.offset), item.record.offset)
        for tp, offset in first.items():
            if tp not in consumer.assignment():
                continue
            try:
                # A position not known at once is being reset to the committed offset, which
                # is where reading must start again anyway: no need to wait for it.
                position = await asyncio.wait_for(consumer.position(tp), _POSITION_WAIT_S)
                if position > offset:
                    consumer.seek(tp, offset)
            except (IllegalStateError, TimeoutError):
                continue  # revoked, or being reset: reading starts again from the committed offset

    def _accept(self, consumer: AIOKafkaConsumer, fetched: _Fetched) -> None:
        """Hand a current fetch to the aligner. A side whose position moved past what the
        aligner was handed (records read and never added) is sought back and its part of this
        fetch left out: a settled commit must never pass records nobody applied."""
        gaps: dict[Side, int] = {}
        if fetched.started == fetched.generation:
            for side, before in fetched.before.items():
                known = self.aligner.fetched_through.get(side)
                if known is not None and before > known:
                    gaps[side] = known
        for (source, partition), known in gaps.items():
            tp = TopicPartition(self.topics[source], partition)
            log.warning(
                "position_gap",
                partition=str(tp),
                handed_through=known,
                position=fetched.before[(source, partition)],
                generation=fetched.generation,
            )
            with contextlib.suppress(IllegalStateError):  # revoked: read again from committed
                consumer.seek(tp, known)
        decoded = fetched.decoded
        positions = fetched.positions
        if gaps:
            decoded = [d for d in decoded if (d.record.source, d.record.partition) not in gaps]
            positions = {side: p for side, p in positions.items() if side not in gaps}
        self.aligner.add(decoded)
        self.aligner.fetched(positions)
        self.trace.added(decoded, fetched.wall, fetched.mono)

    async def _positions(self, consumer: AIOKafkaConsumer) -> dict[Side, int] | None:
        """Fetch position of every assigned side; None if one was revoked while asked."""
        positions: dict[Side, int] = {}
        for tp in consumer.assignment():
            try:
                positions[(self.sources[tp.topic], tp.partition)] = await consumer.position(tp)
            except IllegalStateError:
                return None
        return positions

    async def _fetch(
        self, consumer: AIOKafkaConsumer, timeout_ms: int | None = None, max_records: int = 0
    ) -> _Fetched:
        """Records read and decoded, with the assignment generation they were returned under
        (a revocation resets every position, so records returned before it are read again)
        and the fetch position of every assigned partition before and just after. By default
        it waits `batch_timeout_ms` for records and takes up to `batch_max_records`."""
        started = self.listener.generation
        before = await self._positions(consumer)
        fetched = await consumer.getmany(
            timeout_ms=self.settings.batch_timeout_ms if timeout_ms is None else timeout_ms,
            max_records=max_records or self.settings.batch_max_records,
        )
        fetched_wall, fetched_mono = time.time(), time.monotonic()
        generation, rebalancing = self.listener.generation, self.listener.rebalancing
        positions = await self._positions(consumer)
        if positions is None or before is None:
            # A partition was revoked meanwhile: the whole fetch belongs to the old assignment.
            generation, positions = _STALE, {}
        decoded: list[Decoded | Dead] = []
        for tp, messages in fetched.items():
            source = self.sources[tp.topic]
            for m in messages:
                decoded.append(self.decoder(to_input(source, m)))
                if len(decoded) % _DECODE_SLICE == 0:
                    await asyncio.sleep(0)  # let the batch in the database take its next step
        return _Fetched(
            started,
            generation,
            rebalancing,
            decoded,
            before or {},
            positions,
            fetched_wall,
            fetched_mono,
        )

    async def _other_sides(
        self, consumer: AIOKafkaConsumer
    ) -> tuple[set[tuple[Source, int]], frozenset[tuple[Source, int]]]:
        """Of the sides the aligner waits on: those with nothing more to fetch right now, and
        those known to have unread records. A side that is not assigned (both checks assert
        it is) or whose high watermark is not known yet is in neither."""
        done: set[tuple[Source, int]] = set()
        unread: set[tuple[Source, int]] = set()
        for source, partition in self.aligner.waiting_on():
            tp = TopicPartition(self.topics[source], partition)
            # Asked afresh for each side: a position asked for before may have let a rebalance in.
            if tp not in consumer.assignment():
                continue
            # read_committed: the end that can be read is the last stable offset; records of a
            # transaction still open lie beyond it and cannot be waited for.
            end = consumer.last_stable_offset(tp)
            if end is None or end < 0:
                end = consumer.highwater(tp)
            if end is None:
                continue
            try:
                position = await consumer.position(tp)
            except IllegalStateError:
                continue  # revoked while asked: the rebalance drops its buffers
            if position >= end:
                done.add((source, partition))
            else:
                unread.add((source, partition))
        return done, frozenset(unread)

    def _throttle(self, consumer: AIOKafkaConsumer) -> None:
        """Pause fetching a side while much of it waits for its counterpart: memory stays
        bounded however far behind the other topic is."""
        cap = 4 * self.settings.batch_max_records
        assigned = consumer.assignment()
        for (source, partition), buffer in self.aligner.buffers.items():
            tp = TopicPartition(self.topics[source], partition)
            if tp not in assigned:
                continue
            if len(buffer) > cap:
                consumer.pause(tp)
                self.throttled.add(tp)
            elif tp in self.throttled:
                consumer.resume(tp)
                self.throttled.discard(tp)

    async def _handle(
        self,
        consumer: AIOKafkaConsumer,
        ready: list[Decoded | Dead],
        pending: dict[int, datetime | None],
        stop: asyncio.Event,
        done: asyncio.Event,
    ) -> None:
        """Apply `ready` in one transaction, set `done`, and start its offset commit."""
        started = time.perf_counter()
        report = await self._apply(ready, pending, stop)
        done.set()
        applied = time.perf_counter()
        # The outputs are committed: the relay may publish them while the offsets commit.
        self.on_applied(report)
        self.metrics.stage_seconds.labels("transaction").observe(applied - started)
        self._observe(report, len(ready))
        next_offsets: dict[TopicPartition, int] = {}
        for item in ready:
            tp = TopicPartition(item.record.topic, item.record.partition)
            next_offsets[tp] = max(next_offsets.get(tp, 0), item.record.offset + 1)
        # The spans go only into the DEBUG commit trace: not built per batch when it is off.
        released = _spans(ready) if logs.traces(_LOGGER) else {}
        # Offsets are committed in batch order: the batch before's commit ran while this one
        # was applied, and this one's runs while the next is fetched and applied. A rebalance
        # waits for it (`_Revocation`), and so does the end of the stream.
        await self._committed()
        offsets = self._with_settled(next_offsets)

        async def commit() -> None:
            await self._commit(consumer, offsets, stop, len(ready), released)
            committed = time.perf_counter()
            self.metrics.stage_seconds.labels("offset_commit").observe(committed - applied)
            self.metrics.batch_seconds.observe(committed - started)

        self.commit_task = asyncio.create_task(commit())

    async def _committed(self) -> None:
        """Wait for the offset commit in flight, if any; what it raised is raised here."""
        task, self.commit_task = self.commit_task, None
        if task is not None:
            await task

    def _with_settled(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        """Move a partition's commit to its fetch position when nothing of it waits unreleased:
        past a transaction's commit marker, which no record ever covers, so that a
        read_committed group reaches the log end and its lag can be zero."""
        merged = dict(offsets)
        if self.listener.rebalancing:
            return merged  # positions belong to an assignment being replaced
        for (source, partition), position in self.aligner.settled().items():
            tp = TopicPartition(self.topics[source], partition)
            if position > max(merged.get(tp, 0), self.committed.get(tp, 0)):
                merged[tp] = position
        return merged

    async def _commit_settled(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """With nothing to apply, still commit positions that moved past markers alone."""
        await self._committed()
        offsets = self._with_settled({})
        if offsets:
            await self._commit(consumer, offsets, stop, 0, {})

    async def _apply(
        self,
        decoded: Sequence[Decoded | Dead],
        pending: dict[int, datetime | None],
        stop: asyncio.Event,
    ) -> BatchReport:
        """Apply the batch; a record that fails for a reason other than infrastructure is
        isolated by splitting the batch and dead-lettered alone. `pending`: per partition, the
        earliest arrival among records still to be applied after these."""

        async def attempt() -> BatchReport:
            return await apply_batch(
                self.store, decoded, self.policy, self.encoder, datetime.now(UTC), pending
            )

        try:
            return await retry(
                "apply_batch", attempt, stop, self.metrics, self.settings.retry_max_backoff_s
            )
        except ShuttingDown:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must not stall the partition
            if len(decoded) == 1:
                item = decoded[0]
                if _is_bare(item):
                    return await self._write_bare(item, pending, stop, exc)
                log.error(
                    "record_failed",
                    topic=item.record.topic,
                    partition=item.record.partition,
                    offset=item.record.offset,
                    account=_account(item.record),
                    error=repr(exc),
                )
                return await self._apply([_dead_letter_of(item, exc)], pending, stop)
            middle = len(decoded) // 2
            first = await self._apply(
                decoded[:middle], _with_pending(pending, decoded[middle:]), stop
            )
            second = await self._apply(decoded[middle:], pending, stop)
            first.applied += second.applied
            first.duplicates += second.duplicates
            first.dead += second.dead
            first.implicit_accounts += second.implicit_accounts
            first.reminders += second.reminders
            return first

    async def _write_bare(
        self,
        item: Decoded | Dead,
        pending: dict[int, datetime | None],
        stop: asyncio.Event,
        exc: Exception,
    ) -> BatchReport:
        """A dead letter holding nothing of its record failed: not the record's doing, so it is
        written again, with backoff, until it is stored or the worker stops (never skipped)."""
        delay_s = 0.1
        while True:
            log.error(
                "dead_letter_failed",
                topic=item.record.topic,
                partition=item.record.partition,
                offset=item.record.offset,
                error=repr(exc),
            )
            if stop.is_set():
                raise ShuttingDown("dead_letter") from exc
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay_s)
            delay_s = min(delay_s * 2, self.settings.retry_max_backoff_s)
            try:
                return await apply_batch(
                    self.store, [item], self.policy, self.encoder, datetime.now(UTC), pending
                )
            except Exception as again:  # noqa: BLE001 - logged above on the next round
                exc = again

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        next_offsets: dict[TopicPartition, int],
        stop: asyncio.Event,
        batch: int,
        released: dict[str, list[int]],
    ) -> None:
        """Commit `next_offsets`; `batch` records were applied just before, `released` their
        first and last offset per partition (both for the log line that traces each commit)."""
        offsets = {tp: OffsetAndMetadata(offset, "") for tp, offset in next_offsets.items()}

        async def attempt() -> None:
            await consumer.commit(offsets)

        try:
            await retry("commit", attempt, stop, self.metrics, self.settings.retry_max_backoff_s)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # The database already holds the batch; whoever owns the partitions now re-reads
            # it and skips every event as a duplicate.
            log.warning(
                "commit_lost_to_rebalance", error=str(exc), offsets=_by_partition(next_offsets)
            )
            return
        now = time.monotonic()
        for tp, offset in next_offsets.items():
            self.last_commit[tp] = now
            self.committed[tp] = offset
        log.debug(
            "offsets_committed",
            offsets=_by_partition(next_offsets),
            generation=self.listener.generation,
            batch=batch,
            released=released,
        )

    def _observe(self, report: BatchReport, size: int) -> None:
        m = self.metrics
        m.batch_size.observe(size)
        for source, n in report.applied.items():
            m.events.labels(self._topic(source), "applied").inc(n)
        for source, n in report.duplicates.items():
            m.events.labels(self._topic(source), "duplicate").inc(n)
        for dead in report.dead:
            m.events.labels(dead.record.topic, "dead_lettered").inc()
            m.dlq.labels(dead.code).inc()
            log.warning(
                "dead_lettered",
                topic=dead.record.topic,
                partition=dead.record.partition,
                offset=dead.record.offset,
                account=_account(dead.record),
                error_code=dead.code,
                reason=dead.reason,
            )
        m.implicit_accounts.inc(report.implicit_accounts)
        m.reminders.inc(report.reminders)

    def _topic(self, source: str) -> str:
        return next(t for t, s in self.sources.items() if s == source)


def _dead_letter_of(item: Decoded | Dead, exc: Exception) -> Dead:
    """What a record that failed alone becomes: never a dead letter of a dead letter."""
    # A failed record is dead-lettered with its key and value; if even that failed, once more
    # without them (the record stays readable at its source position). The bare letter holds
    # nothing taken from the record, so this ends after two steps.
    record = item.record
    if isinstance(item, Decoded):
        return Dead(record, "processing_error", f"could not be applied: {exc!r}")
    bare = replace(record, key=None, value=None)
    reason = (
        f"{item.code}: {item.reason} (key and value left out: the dead letter with them could "
        f"not be written: {exc!r}; the record is at {record.topic}/{record.partition}/"
        f"{record.offset})"
    )
    return Dead(bare, item.code, reason)


def _is_bare(item: Decoded | Dead) -> bool:
    """A dead letter that carries nothing taken from its record."""
    return isinstance(item, Dead) and item.record.key is None and not item.record.value


def _spans(items: Iterable[Decoded | Dead]) -> dict[str, list[int]]:
    """First and last offset per topic-partition among `items` (for logs)."""
    out: dict[str, list[int]] = {}
    for item in items:
        r = item.record
        key = f"{r.topic}:{r.partition}"
        span = out.get(key)
        if span is None:
            out[key] = [r.offset, r.offset]
        else:
            span[0], span[1] = min(span[0], r.offset), max(span[1], r.offset)
    return out


def _by_partition(offsets: dict[TopicPartition, int]) -> dict[str, int]:
    return {f"{tp.topic}:{tp.partition}": offset for tp, offset in sorted(offsets.items())}


def to_input(source: Source, message: ConsumerRecord[bytes, bytes]) -> InputRecord:
    """A consumed message as the decoder sees it (headers are not part of the contract)."""
    return InputRecord(
        source,
        message.topic,
        message.partition,
        message.offset,
        message.key,
        message.value,
        message.timestamp,
    )


def _with_pending(
    pending: dict[int, datetime | None], items: Sequence[Decoded | Dead]
) -> dict[int, datetime | None]:
    """`pending` with `items` still to be applied too (the second half of a split batch)."""
    out = dict(pending)
    for item in items:
        p = item.record.partition
        out[p] = earliest(item.record.arrived_at, out.get(p))  # absent: not known
    return out


def _account(record: InputRecord) -> str | None:
    """The record's key, which producers set to the account id."""
    return None if record.key is None else record.key.decode("utf-8", errors="replace")
