"""Does an aiokafka group assign partition i of both input topics to the same member?

2 and 4 consumers in one group, both subscribed to two 6-partition topics, with
the RangePartitionAssignor and with aiokafka's default RoundRobinPartitionAssignor.

    .venv/bin/python benchmarks/runtime/copartition_check.py
"""

from __future__ import annotations

import asyncio
import json
import uuid

from aiokafka import AIOKafkaConsumer
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from common import BOOTSTRAP, ensure_topic

TOPICS = ("adr-copart-usage", "adr-copart-account")


async def check(assignor, n_members: int) -> dict:
    group = f"adr-copart-{uuid.uuid4().hex[:8]}"
    consumers = [
        AIOKafkaConsumer(
            *TOPICS,
            bootstrap_servers=BOOTSTRAP,
            group_id=group,
            enable_auto_commit=False,
            partition_assignment_strategy=(assignor,),
        )
        for _ in range(n_members)
    ]
    await asyncio.gather(*(c.start() for c in consumers))
    try:
        for _ in range(100):  # wait for a stable assignment covering all 12 partitions
            for c in consumers:
                await c.getmany(timeout_ms=100)
            if sum(len(c.assignment()) for c in consumers) == 12 and all(
                c.assignment() for c in consumers
            ):
                break
        members = []
        for c in consumers:
            by_topic = {
                t: sorted(tp.partition for tp in c.assignment() if tp.topic == t) for t in TOPICS
            }
            members.append(by_topic)
        co = all(m[TOPICS[0]] == m[TOPICS[1]] for m in members)
        return {
            "assignor": assignor.name,
            "n_members": n_members,
            "members": members,
            "co_partitioned": co,
        }
    finally:
        await asyncio.gather(*(c.stop() for c in consumers))


async def main() -> None:
    for t in TOPICS:
        await ensure_topic(t, 6)
    for n in (2, 4):
        for a in (RangePartitionAssignor, RoundRobinPartitionAssignor):
            print(json.dumps(await check(a, n)))


if __name__ == "__main__":
    asyncio.run(main())
