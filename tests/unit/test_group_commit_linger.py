"""GroupCommit's ``linger_s``: a batch that is not full waits that long to fill."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from gateway.engine.batching import GroupCommit


def recording() -> tuple[list[int], GroupCommit[int, int]]:
    sizes: list[int] = []

    async def run_batch(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return [i * 10 for i in items]

    async def run_one(item: int) -> int:
        sizes.append(1)
        return item * 10

    return sizes, GroupCommit(run_batch, run_one, max_batch=8, linger_s=0.05)


async def test_writes_that_arrive_while_a_batch_lingers_share_its_commit() -> None:
    sizes, group = recording()
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0.01)  # the flusher is lingering: these join its batch
    rest = [asyncio.create_task(group.submit(n)) for n in (2, 3, 4)]
    assert await asyncio.gather(first, *rest) == [10, 20, 30, 40]
    assert sizes == [4]


async def test_a_full_batch_commits_without_lingering() -> None:
    sizes, group = recording()
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await asyncio.gather(*(group.submit(n) for n in range(8))) == [n * 10 for n in range(8)]
    assert sizes == [8]
    assert loop.time() - began < 0.05  # full when the flusher looked: no wait


async def test_without_linger_a_lone_write_commits_at_once() -> None:
    sizes: list[int] = []

    async def run_one(item: int) -> int:
        sizes.append(1)
        return item

    group: GroupCommit[int, int] = GroupCommit(lambda items: asyncio.sleep(0, list(items)), run_one)
    first = asyncio.create_task(group.submit(1))
    await asyncio.sleep(0.01)
    assert first.done() and sizes == [1]


def under_load() -> tuple[list[int], GroupCommit[int, int]]:
    sizes: list[int] = []

    async def run_batch(items: Sequence[int]) -> list[int]:
        sizes.append(len(items))
        return list(items)

    async def run_one(item: int) -> int:
        sizes.append(1)
        return item

    return sizes, GroupCommit(run_batch, run_one, max_batch=8, linger_s=0.05, linger_from=2)


async def test_with_linger_from_two_a_lone_write_commits_at_once() -> None:
    sizes, group = under_load()
    loop = asyncio.get_running_loop()
    for n in range(3):  # one at a time, as on a lightly loaded gateway
        began = loop.time()
        assert await group.submit(n) == n
        assert loop.time() - began < 0.04  # no linger of 0.05 s
    assert sizes == [1, 1, 1]


async def test_writes_that_wait_together_linger_and_so_does_the_batch_after_them() -> None:
    sizes, group = under_load()
    first = [asyncio.create_task(group.submit(n)) for n in (1, 2)]  # two waiting: under load
    await asyncio.sleep(0.01)  # lingering: this one joins them
    late = asyncio.create_task(group.submit(3))
    assert await asyncio.gather(*first, late) == [1, 2, 3]
    assert sizes == [3]
    # the batch before held three: a lone write now lingers for company too
    lone = asyncio.create_task(group.submit(4))
    await asyncio.sleep(0.01)
    company = asyncio.create_task(group.submit(5))
    assert await asyncio.gather(lone, company) == [4, 5]
    assert sizes == [3, 2]
    # a lone write after that batch of two still lingers; after its lone batch, none does
    assert await group.submit(6) == 6 and await group.submit(7) == 7
    assert sizes[-1] == 1
