"""``efficientdet.inference.parallel.ordered_map``: several items through torch at once, in order, bounded."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from efficientdet.inference.parallel import ordered_map, split_threads


@pytest.fixture
def four_torch_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(threads)


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("detect")]


def counted(taken: list[int], n: int = 100):
    """0, 1, ..., n - 1, each appended to ``taken`` as it is handed out."""
    for i in range(n):
        taken.append(i)
        yield i


def test_split_threads():
    assert [split_threads(p, 4) for p in (1, 2, 3, 4, 8)] == [4, 2, 1, 1, 1]
    assert split_threads(2, 1) == 1


def test_results_keep_the_order_and_each_worker_gets_its_share_of_threads(four_torch_threads):
    seen = []

    def work(i: int) -> int:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        time.sleep(0.02 if i % 3 == 0 else 0.001)  # later items often finish first
        return i * i

    assert list(ordered_map(work, range(12), parallel=2)) == [i * i for i in range(12)]
    assert {threads for _, threads in seen} == {2}  # 4 torch threads shared by 2 workers
    assert len({name for name, _ in seen}) == 2 and all(name.startswith("detect") for name, _ in seen)
    assert torch.get_num_threads() == 4  # the caller's own count is untouched
    assert not pool_threads()  # the pool is closed when the iteration ends


def test_one_at_a_time_runs_in_the_callers_thread(four_torch_threads):
    names = list(ordered_map(lambda _: (threading.current_thread().name, torch.get_num_threads()), range(3), 1))
    assert names == [(threading.current_thread().name, 4)] * 3


def test_at_most_parallel_plus_one_items_are_taken_ahead():
    taken: list[int] = []
    results = ordered_map(lambda i: i, counted(taken), parallel=2)
    assert next(results) == 0
    assert taken == [0, 1, 2]  # a camera or a long video is never read far ahead of the results
    results.close()
    assert not pool_threads()


def test_an_error_is_raised_at_its_items_turn_and_stops_the_run():
    taken: list[int] = []

    def work(i: int) -> int:
        if i == 3:
            raise ValueError("item 3 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="item 3 is bad"):
        for result in ordered_map(work, counted(taken), parallel=2):
            got.append(result)
    assert got == [0, 1, 2]  # everything before the bad item, nothing after it
    assert len(taken) <= 3 + 3 and not pool_threads()


def test_torch_threads_sets_the_count_for_a_block_and_restores_it(four_torch_threads):
    from efficientdet.utils.threads import torch_threads

    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4
    with pytest.raises(KeyError), torch_threads(2):
        raise KeyError("an error inside the block")
    assert torch.get_num_threads() == 4
    for unchanged in (None, 0, 4):
        with torch_threads(unchanged):
            assert torch.get_num_threads() == 4
