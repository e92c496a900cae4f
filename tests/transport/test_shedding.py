"""Load shedding (issue 28): with shed_below_fps / shed_model_load set, a new player gets 503 server_busy while
a live session falls short of its fps or the model worker would run out of time with one more session; off by
default; the scheduler's load is the share of time it spends in ticks."""

import asyncio
import time
from types import SimpleNamespace

import pytest

from worldlab.config import SessionConfig
from worldlab.engine import Scheduler, Session
from worldlab.engine.models import open_session
from worldlab.engine.oracle import EnvOracle
from worldlab.transport import shedding
from worldlab.transport.rooms import OfferError

from tests.transport.test_hardening import hub_on

pytestmark = pytest.mark.timeout(120)


class Fixed:
    """A scheduler stand-in: a fixed load, and which sessions it steps."""

    def __init__(self, load: float, stepping=()):
        self._load, self._stepping = load, set(stepping)

    def load(self) -> float:
        return self._load

    def stepping(self, session) -> bool:
        return session in self._stepping


def room(sched, fps: float, age_s: float, now: float, stepped: bool = True):
    """A live room whose session started `age_s` before `now` and sent new frames at `fps` over the window."""
    s = Session(None, "p", fps_target=30.0)
    s.origin = s.stepping_since = now - age_s
    for _ in range(round(fps * shedding.LOAD_WINDOW_S)):
        s.metrics.event("sent")
    if stepped:
        sched._stepping.add(s)
    return SimpleNamespace(session=s, scheduler=sched)


def test_off_by_default_whatever_the_load():
    now, sched = time.monotonic(), Fixed(0.99)
    rooms = [room(sched, 3.0, 10.0, now)]
    assert shedding.busy_reason(SessionConfig(), sched, rooms, now=now) is None


def test_a_settled_session_short_of_its_fps_refuses_the_next_player():
    now, sched = time.monotonic(), Fixed(0.1)
    cfg = SessionConfig(shed_below_fps=0.9)
    assert shedding.busy_reason(cfg, sched, [room(sched, 29.5, 10.0, now)], now=now) is None
    why = shedding.busy_reason(cfg, sched, [room(sched, 29.5, 10.0, now), room(sched, 20.0, 10.0, now)], now=now)
    assert why == "a live session gets 20.0 of its 30 fps"
    # A session with no full window yet, or one that is not stepped (idle), says nothing about the load.
    assert shedding.busy_reason(cfg, sched, [room(sched, 5.0, 1.0, now)], now=now) is None
    assert shedding.busy_reason(cfg, sched, [room(sched, 0.0, 10.0, now, stepped=False)], now=now) is None
    woke = room(sched, 4.0, 60.0, now)  # an idle room stepped again a second ago: its window still holds the idle
    woke.session.stepping_since = now - 1.0
    assert shedding.busy_reason(cfg, sched, [woke], now=now) is None


def test_the_model_load_is_projected_over_one_more_session():
    now = time.monotonic()
    cfg = SessionConfig(shed_model_load=0.8)
    sched = Fixed(0.3)
    rooms = [room(sched, 30, 10.0, now)]
    assert shedding.busy_reason(cfg, sched, rooms, now=now) is None  # 0.3 x 2 / 1 = 0.6
    # A room made a moment ago and not stepped yet, and a slot being made, will add to it: 0.3 x 4 / 1 = 1.2.
    rooms.append(room(sched, 0, 0.2, now, stepped=False))
    assert shedding.busy_reason(cfg, sched, rooms, starting=1, now=now) == \
        "the model would be busy 120 % of the time with one more session"
    # Another scheduler's sessions (a model variant) do not load this one.
    other = Fixed(0.9)
    assert shedding.busy_reason(cfg, sched, [room(sched, 30, 10.0, now), room(other, 30, 10.0, now)],
                                now=now) is None
    assert shedding.busy_reason(cfg, sched, [], now=now) is None  # nothing stepped yet: no load to project


@pytest.mark.parametrize("field", ["shed_below_fps", "shed_model_load"])
@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_share_outside_0_to_1_is_a_one_line_error(field, value):
    with pytest.raises(ValueError, match=f"^{field} must be between 0 \\(off\\) and 1, got {value}$"):
        SessionConfig(**{field: value})


class Slow:
    """EnvOracle whose step takes `step_s` longer (a model that costs what a bigger one would)."""

    def __init__(self, step_s: float):
        self.inner, self.step_s = EnvOracle(seed=5), step_s

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, states, actions):
        time.sleep(self.step_s)
        return self.inner.step(states, actions)


def test_scheduler_load_is_the_share_of_time_in_ticks():
    sched = Scheduler(Slow(0.010)).start()
    try:
        assert sched.load() == 0.0
        sched.add(Session(open_session(sched.model, "p", 1), "p", fps_target=30.0))
        time.sleep(2.5)
        load = sched.load()
    finally:
        sched.stop()
    # 30 ticks a second of >= 10 ms: >= 0.30 of the time, and well under 1 (the oracle itself is ~1 ms).
    assert 0.28 <= load <= 0.6, load


async def test_a_busy_model_refuses_new_players_until_it_has_time_again():
    async with hub_on(model=Slow(0.020), config=SessionConfig(shed_model_load=0.8)) as (hub, sched):
        first = await hub.create_room()
        await asyncio.sleep(2.5)  # a full load window: ~0.6 of the worker's time, 1.2 with a second session
        with pytest.raises(OfferError) as exc:
            await hub.create_room()
        assert (exc.value.status, exc.value.code, exc.value.retry_after_s) == (503, "server_busy", 2.0)
        assert "the model would be busy" in str(exc.value)
        assert hub.caps.hits["server_busy"] == 1
        await hub._close_room(first)
        await asyncio.sleep(shedding.LOAD_WINDOW_S + 0.2)  # the worker rests: its load falls to 0
        second = await hub.create_room()
        assert sched.stepping(second.session)
