"""The sound generator (worldlab.engine.audio) and its track: a known world -> clicks on the right samples, a tone
at the agent's pitch, silence for pictures that are not the world, pts on the video's origin, bad input refused."""

import asyncio
import fractions
import time

import numpy as np
import pytest

from worldlab import env
from worldlab.engine.audio import (CLICK_AMP, CLICK_GAP_S, CLICK_SAMPLES, FRAME_SAMPLES, SAMPLE_RATE, SILENT,
                                   TONE_AMP, BounceDetector, Sighting, SoundScore, pitch_hz, read_frame)
from worldlab.engine.session import Session
from worldlab.transport.audio import RoomAudioTrack
from worldlab.transport.track import VIDEO_CLOCK

FPS = 30.0
LOUD = 0.5 * 32767  # above the tone (TONE_AMP), below a click's first sample (CLICK_AMP)


def bouncing_world():
    """Object 0 runs into the left wall: x 8, 6, 4, 2, 0, then 2 (frame 5 shows it moving back). Object 1 and the
    agent are far from the walls, the pillar and each other for the 12 frames used."""
    w = env.World(0)
    w.place(agent=(30, 2), objects=[(10, 10), (20, 40)], velocities=[(-2, 1), (1, 1)])
    return w


def play(world, n, origin=100.0, start=0.5, keys=()):
    """Observe n frames, 'send' frame f at origin + start + f / FPS; -> (score, send times, click flags)."""
    score = SoundScore(origin)
    times, clicks = [], []
    for f in range(n):
        score.observe(f, world.step(keys))
        t = origin + start + f / FPS
        times.append(t)
        clicks.append(score.shown(f, t))
    return score, times, clicks


def onsets(samples: np.ndarray) -> list[int]:
    """First sample of each loud run (a click), runs CLICK_SAMPLES apart at least."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > LOUD)[0]
    out = []
    for i in loud:
        if not out or i - out[-1] > CLICK_SAMPLES:
            out.append(int(i))
    return out


def test_read_frame_finds_the_sprites_of_every_theme():
    for theme in env.THEMES:
        w = env.World(3, theme)
        w.place(agent=(12, 30), objects=[(2, 5), (55, 50)], velocities=[(1, 1), (1, 1)])
        seen = read_frame(w.render())
        assert seen.objects == ((2, 5), (55, 50))
        assert seen.agent_x == pytest.approx((12 + (env.AGENT - 1) / 2) / (env.SIZE - 1))


def test_read_frame_is_silent_on_pictures_that_are_not_the_world():
    rng = np.random.default_rng(0)
    assert read_frame(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) == SILENT  # a foreign model's picture
    assert read_frame(np.zeros((128, 128, 3), np.uint8)) == SILENT  # another size
    assert read_frame("not a frame") == SILENT


def test_partly_hidden_object_is_not_located():
    w = env.World(0)
    w.place(agent=(2, 2), objects=[(38, 20), (10, 40)], velocities=[(1, 1), (1, 1)])  # object 0 under the pillar
    assert read_frame(w.render()).objects == (None, (10, 40))


def test_bounce_clicks_on_the_sample_of_the_frame_that_shows_it():
    origin = 100.0
    score, times, clicks = play(bouncing_world(), 12, origin=origin)
    assert clicks == [f == 5 for f in range(12)]
    assert score.click_lead_ms(5) == 0.0 and score.click_lead_ms(4) is None  # no lead: at the frame's pts
    total = score.sample_at(times[-1]) + FRAME_SAMPLES
    audio = np.concatenate([score.render(k, FRAME_SAMPLES) for k in range(0, total, FRAME_SAMPLES)])
    video_pts = int((times[5] - origin) * VIDEO_CLOCK)  # what the video track stamps on frame 5
    assert onsets(audio) == [round(video_pts / VIDEO_CLOCK * SAMPLE_RATE)]  # the same instant on the same origin
    assert audio[score.sample_at(times[5])] == pytest.approx(32767 * CLICK_AMP, rel=TONE_AMP / CLICK_AMP + 1e-3)


def test_tone_follows_the_agent_and_starts_with_the_first_frame_sent():
    score, times, _ = play(bouncing_world(), 12)
    first = score.sample_at(times[0])
    audio = np.concatenate([score.render(k, FRAME_SAMPLES) for k in range(0, first + SAMPLE_RATE // 10,
                                                                          FRAME_SAMPLES)])
    assert not audio[:first].any()  # nothing shown yet: silence
    tone = audio[first:first + 4000].astype(float)  # before the click (frame 5 is 0.17 s later)
    crossings = np.count_nonzero(np.diff(np.signbit(tone)))
    hz = crossings / 2 / (len(tone) / SAMPLE_RATE)
    assert hz == pytest.approx(pitch_hz((30 + (env.AGENT - 1) / 2) / (env.SIZE - 1)), rel=0.03)
    assert np.abs(tone).max() <= TONE_AMP * 32767 + 1


def test_same_frames_and_times_give_the_same_samples():
    a, b = play(bouncing_world(), 12)[0], play(bouncing_world(), 12)[0]
    span = range(0, 40 * FRAME_SAMPLES, FRAME_SAMPLES)
    assert all(np.array_equal(a.render(k, FRAME_SAMPLES), b.render(k, FRAME_SAMPLES)) for k in span)


def test_a_bounce_in_a_dropped_frame_clicks_with_the_next_frame_sent():
    score, w = SoundScore(0.0), bouncing_world()
    for f in range(8):
        score.observe(f, w.step(()))
        if f != 5:  # the slot dropped frame 5: the track never sent it
            assert score.shown(f, 1 + f / FPS) is (f == 6)


def test_bounces_closer_than_the_gap_share_one_click():
    w = env.World(0)  # object 1 bounces at frame 4 (bottom wall: y 54, 56, 58, 60, 58), object 0 at frame 5
    w.place(agent=(30, 2), objects=[(10, 10), (20, 52)], velocities=[(-2, 1), (1, 2)])
    _, times, clicks = play(w, 12)
    assert [f for f, c in enumerate(clicks) if c] == [4]
    assert 1 / FPS < CLICK_GAP_S


def test_a_hidden_stretch_forgets_the_direction():
    det = BounceDetector()
    moving = [((10, 10), None), ((12, 10), None), (None, None), ((10, 10), None), ((8, 10), None)]
    flags = [det.update(f, Sighting(0.5, objs)) for f, objs in enumerate(moving)]
    assert flags == [False] * 5  # the reversal happened out of sight: no click on re-appearing


def test_silent_model_renders_silence():
    score = SoundScore(0.0)
    for f in range(30):
        score.observe(f, np.full((64, 64, 3), 7, np.uint8))
        assert score.shown(f, f / FPS) is False
    assert not score.render(0, 30 * FRAME_SAMPLES).any()


def test_render_must_continue_where_it_stopped():
    score = SoundScore(0.0)
    score.render(0, FRAME_SAMPLES)
    with pytest.raises(ValueError, match=f"continue at sample {FRAME_SAMPLES}"):
        score.render(3 * FRAME_SAMPLES, FRAME_SAMPLES)


def test_audio_track_pts_count_samples_from_the_video_origin():
    async def run():
        session = Session(None, "a walk in the forest")
        track = RoomAudioTrack(session, SoundScore(session.origin))
        frames = []
        for _ in range(5):
            frames.append(await track.recv())
            # returned only once its last instant has passed: every video frame sent within it has been placed
            assert time.monotonic() - session.origin >= (frames[-1].pts + FRAME_SAMPLES) / SAMPLE_RATE
        track.stop()
        return frames

    frames = asyncio.run(run())
    pts = [f.pts for f in frames]
    assert all(b - a == FRAME_SAMPLES for a, b in zip(pts, pts[1:]))
    assert all(f.samples == FRAME_SAMPLES and f.sample_rate == SAMPLE_RATE
               and f.time_base == fractions.Fraction(1, SAMPLE_RATE) for f in frames)
    assert pts[0] % FRAME_SAMPLES == 0


def test_a_foreseen_bounce_clicks_the_lead_before_its_frame():
    lead = 0.1  # 3 frames at 30 fps: foreseen from frame 2 on (x 4 -> 2 -> 0 -> 2)
    origin, w = 100.0, bouncing_world()
    score, times = SoundScore(origin, fps=FPS, lead_s=lead), []
    flags = []
    for f in range(12):
        score.observe(f, w.step(()))
        times.append(origin + 0.5 + f / FPS)
        flags.append(score.shown(f, times[-1]))
    assert flags == [f == 5 for f in range(12)]  # frame 5 shows the bounce and is flagged for the page
    total = score.sample_at(times[-1]) + FRAME_SAMPLES
    audio = np.concatenate([score.render(k, FRAME_SAMPLES) for k in range(0, total, FRAME_SAMPLES)])
    assert onsets(audio) == [score.sample_at(times[5] - lead)]  # exactly the lead early, on the same clock
    assert score.clicks == 1 and score.unconfirmed == 0 and score.click_lead_ms(5) == pytest.approx(100.0)


def test_a_foreseen_bounce_that_does_not_come_is_counted():
    score, w = SoundScore(0.0, fps=FPS, lead_s=0.1), bouncing_world()
    for f in range(4):
        score.observe(f, w.step(()))
        score.shown(f, f / FPS)
    state = w.state()  # the agent now stands where object 0 was foreseen to bounce (x 0..5): it is never seen
    w.place(agent=(0, 14), objects=state["objects"], velocities=state["velocities"])
    for f in range(4, 10):
        score.observe(f, w.step(()))
        assert score.shown(f, f / FPS) is False
    assert score.clicks == 1 and score.unconfirmed == 1


@pytest.mark.parametrize("lead", [-0.01, 0.6, "0.1"])
def test_bad_lead_is_refused(lead):
    with pytest.raises(ValueError, match="audio lead must be in"):
        SoundScore(0.0, lead_s=lead)


def test_serve_audio_flag_overrides_the_config_file(tmp_path, capsys):
    from tests.test_config import serve_args
    from worldlab.commands.serve_cmd import check_args

    path = tmp_path / "ops.yaml"
    path.write_text("audio: false\naudio_lead_ms: 60\n")
    assert check_args(serve_args("--config", str(path))).audio is False
    cfg = check_args(serve_args("--config", str(path), "--audio", "on"))
    assert cfg.audio is True and cfg.audio_lead_ms == 60
    with pytest.raises(SystemExit):
        serve_args("--audio", "loud")
    assert "--audio: expected on or off, got 'loud'" in capsys.readouterr().err
