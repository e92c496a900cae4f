"""worldlab.threads, the one thread rule: model steps on one thread, training on the free cores, a server warned
when runners x threads exceed the cores, bad counts refused in one line."""


import pytest
import torch

from worldlab import threads


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_inference_defaults_to_one_thread_and_obeys_a_request():
    torch.set_num_threads(threads.cores())
    assert threads.for_inference() == 1 == torch.get_num_threads()
    assert threads.for_inference(2) == 2 == torch.get_num_threads()


def test_training_takes_the_free_cores():
    n = threads.for_training()
    assert 1 <= n <= threads.cores() and torch.get_num_threads() == n
    assert threads.for_training(1) == 1


def test_free_cores_drop_when_other_processes_are_busy():
    from benchmarks.load_bench import hogs, ordinary_scheduling

    with ordinary_scheduling(), hogs(threads.cores()):
        assert threads.free_cores(0.5) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        threads.check(bad)


def test_a_server_is_warned_past_its_cores():
    assert threads.server_threads(None) == (1, None)
    n, warning = threads.server_threads(threads.cores() + 1)
    assert n == threads.cores() + 1 and "more than this machine's" in warning
    assert threads.server_threads(1, runners=threads.cores() + 1)[1] is not None
