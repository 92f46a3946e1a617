"""A process that writes to a DurableStore as fast as it can and prints each acknowledged id.

Used by the crash test: the parent kills it with SIGKILL mid-batch and checks
that every id printed (acknowledged) is on disk after reopening.
"""

from __future__ import annotations

import asyncio
import sys

from continuum.federation.distributed import storage


async def main(path: str) -> None:
    store = storage.DurableStore(path)
    counter = 0

    async def writer(worker: int) -> None:
        nonlocal counter
        while True:
            counter += 1
            key = counter
            # A batch of several rows: either all of it lands or none.
            await store.commit([storage.Put("acked", key, b"v" * 64),
                                storage.Put("pair", key, str(worker).encode())])
            sys.stdout.write(f"{key}\n")
            sys.stdout.flush()

    await asyncio.gather(*(writer(w) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
