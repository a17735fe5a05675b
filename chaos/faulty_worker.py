"""`python -m chaos.faulty_worker billing-worker run`: the worker with the relay's fault points.

Test-only; the shipped package has no fault hooks. The run arms a fault by creating a file in
`CHAOS_FAULT_DIR`; the first process whose relay reaches the point claims it (unlinks it):

- `exit-after-commit`: exit hard (code 86, nothing flushed) right after the Kafka transaction
  committed and before the outbox rows are marked sent — the relay's worst instant.
- `hold-before-commit`: with the transaction open and its messages sent, write `holding` and
  wait for `release` before committing (the run restarts the broker meanwhile).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

EXIT_AFTER_COMMIT = 86
FAULT_DIR_ENV = "CHAOS_FAULT_DIR"
EXIT_FILE = "exit-after-commit"
HOLD_FILE = "hold-before-commit"
HOLDING_FILE = "holding"
RELEASE_FILE = "release"


def claim(path: Path) -> bool:
    """Take an armed fault; only one process gets it."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def install(folder: Path) -> None:
    """Wrap the producer's commit with the two fault points."""
    commit = AIOKafkaProducer.commit_transaction

    async def faulty_commit(self: AIOKafkaProducer) -> Any:
        if claim(folder / HOLD_FILE):
            (folder / HOLDING_FILE).write_text(str(os.getpid()))
            while not claim(folder / RELEASE_FILE):  # noqa: ASYNC110 - another process sets it
                await asyncio.sleep(0.05)
            claim(folder / HOLDING_FILE)
        result = await commit(self)
        if claim(folder / EXIT_FILE):
            sys.stderr.write('{"event": "chaos_exit_after_commit"}\n')
            sys.stderr.flush()
            os._exit(EXIT_AFTER_COMMIT)
        return result

    AIOKafkaProducer.commit_transaction = faulty_commit


def main() -> int:
    folder = os.environ.get(FAULT_DIR_ENV)
    if folder:
        install(Path(folder))
    from worker.entrypoints.cli import main as worker_main

    sys.argv = sys.argv[1:]  # as if started as `billing-worker …`
    worker_main()  # exits by itself with the command's status
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
