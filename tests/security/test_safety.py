"""Safety filters: the prompt normaliser sees through case, accents, homoglyphs, leetspeak, invisible and
spaced-out letters; the blocklist refuses each category and passes the worlds' own prompts; refusals are
errors on every path (data channel, /offer prompt, player.prompt) and flagged with the session id."""

import asyncio

import pytest

from tests.transport.test_hardening import errors, hub_on, until
from tests.transport.test_inprocess import Client
from worldlab.security import safety
from worldlab.transport import protocol
from worldlab.transport.rooms import OfferError

pytestmark = pytest.mark.timeout(120)

REFUSED = {
    "P.O.R.N in the desert": "sexual", "n u d e beach": "sexual", "p0rn": "sexual", "s\u0435x": "sexual",  # Cyrillic e
    "NAKED\u200b": "sexual", "GORE!!": "violence", "a be-headed knight": None, "beheading": "violence",
    "Suicide": "self_harm", "k y s": "self_harm", "kill yourself": "self_harm", "a n4z1 camp": "hate",
    "how to make a bomb": "weapons", "Nüde": "sexual",
}
ALLOWED = ["a walk in the forest", "a snowy day", "desert at night", "night in the desert", "gorgeous forest",
           "the kiss", "a sextant at night", "skill yourself up", "a bomb-proof shelter", "Snow!", "a",
           "walk the dog 4 times"]


@pytest.mark.parametrize("text,category", REFUSED.items())
def test_refused_prompts_name_their_category(text, category):
    assert safety.match(text) == category


@pytest.mark.parametrize("text", ALLOWED)
def test_ordinary_prompts_pass(text):
    assert safety.match(text) is None and safety.screen_prompt(text) == text


def test_normalize_words():
    assert safety.normalize("Ｐ.o.R.n  Ünïcode 4ll") == ["porn", "unicode", "all"]
    assert safety.normalize("z\u200be\u200br\u200bo") == ["zero"]


def test_screen_prompt_keeps_the_basic_checks_and_raises_a_value_error():
    with pytest.raises(ValueError, match="empty"):
        safety.screen_prompt("   ")
    with pytest.raises(safety.PromptRefused) as exc:
        safety.screen_prompt("gore")
    assert isinstance(exc.value, ValueError) and exc.value.category == "violence"


def test_every_blocklist_category_is_reachable():
    for cat, terms in safety.load_blocklist().items():
        assert terms, cat
        sample = " ".join(w.rstrip("*") for w in terms[0])
        assert safety.match(sample) == cat


def test_protocol_refuses_a_blocked_prompt():
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.parse(protocol.encode("prompt", seq=1, text="n.u.d.e"))
    assert exc.value.code == "prompt_refused" and "sexual" in str(exc.value)
    assert protocol.parse(protocol.encode("prompt", seq=1, text="a snowy day")).body == {"text": "a snowy day"}


def test_review_log_is_bounded_and_filters_by_session():
    log = safety.ReviewLog(maxlen=3)
    for i in range(5):
        log.flag(f"s{i % 2}", "prompt", "x")
    assert len(log.events()) == 3 and [e.session for e in log.events("s0")] == ["s0", "s0"]


async def test_refused_prompt_on_the_data_channel_is_an_error_flagged_with_the_session():
    async with hub_on() as (hub, _sched):
        client = Client()
        try:
            ans = await client.connect(hub)
            room = hub.rooms[ans["room"]]
            before = room.session.prompt
            client.send(type="prompt", text="p 0 r n")
            await until(lambda: "prompt_refused" in errors(client))
            await asyncio.sleep(0.2)
            assert room.session.prompt == before  # it never conditioned the model
            flagged = safety.REVIEW.events(room.session.id)
            assert flagged and flagged[-1].kind == "prompt" and "sexual" in flagged[-1].detail
            n = len(client.frames)
            await until(lambda: len(client.frames) >= n + 10)  # and the stream goes on
        finally:
            await client.pc.close()


async def test_refused_prompt_in_an_offer_creates_no_room():
    async with hub_on() as (hub, _sched):
        with pytest.raises(OfferError) as exc:
            await hub.create_room("GORE")
        assert exc.value.status == 400 and exc.value.code == "prompt_refused" and not hub.rooms


def test_player_prompt_trait_refuses_a_blocked_prompt():
    import traitlets

    from worldlab.engine.oracle import EnvOracle
    from worldlab.widget import Player

    p = Player(EnvOracle(seed=1), prompt="a snowy day")
    try:
        with pytest.raises(traitlets.TraitError, match="safety filter"):
            p.prompt = "kill yourself"
        assert p.prompt == "a snowy day" and p.room.session.prompt == "a snowy day"
    finally:
        p.close()


def test_every_client_message_type_has_a_rate_limit():
    from worldlab.config import SessionConfig

    assert {kind for kind, _r, _b in SessionConfig().ctl_rate_limits} == set(protocol.CLIENT_TYPES)


async def test_a_flood_of_actions_is_rate_limited_and_flagged_and_the_stream_goes_on():
    from worldlab.config import SessionConfig

    burst = dict((k, b) for k, _r, b in SessionConfig().ctl_rate_limits)["action"]
    async with hub_on() as (hub, _sched):
        client = Client()
        try:
            ans = await client.connect(hub)
            room = hub.rooms[ans["room"]]
            for i in range(burst + 200):
                client.send(type="action", keys=["left"] if i % 2 else ["right"])
            await until(lambda: errors(client).count("rate_limited") >= 150)
            limited = errors(client).count("rate_limited")
            assert 150 <= limited <= 200  # the burst (plus what refilled meanwhile) got through, the rest did not
            assert set(errors(client)) == {"rate_limited"}
            flags = [e for e in safety.REVIEW.events(room.session.id) if e.kind == "rate"]
            assert flags and "action" in flags[0].detail
            n = len(client.frames)
            await until(lambda: len(client.frames) >= n + 10)
            await asyncio.sleep(1.1)  # tokens refill: a prompt and an action go through again
            before = len(errors(client))
            client.send(type="action", keys=["up"])
            client.send(type="prompt", text="a snowy day")
            await until(lambda: room.session.prompt == "a snowy day")
            assert len(errors(client)) == before
        finally:
            await client.pc.close()
