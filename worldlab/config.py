"""Configuration dataclasses and named presets: the one place for sizes, rates and policies.

Code reads numbers from here instead of scattering constants (see shared/CONVENTIONS.md).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, asdict, fields


CHECKPOINT_DIR = pathlib.Path(__file__).resolve().parent / "checkpoints"  # the shipped checkpoints
CODECS = ("vp8", "h264", "av1")  # video codecs a session may use (serve --codec, the page's ?codec= and menu)
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")  # --host values that mean "every interface"


@dataclass(frozen=True)
class SessionConfig:
    """One live session: pacing, codec and quality ladder."""

    fps_target: float = 30.0
    codec: str = "vp8"  # one of CODECS
    keyframe_interval_s: float = 0.75
    quality: str = "auto"  # "auto" (the controller moves along quality_ladder) | "low" / "high": pin its bottom / top
    # Adaptive quality (worldlab.transport.quality; docs/streaming.md "Adaptive quality"). The ladder, lowest
    # first: (frame height px, bit/s at the "lean" preset, bit/s at "full"); a rung is one height at one preset,
    # named "256p" (full) or "256p-lean". auto starts at the top. A GPU deployment adds (720, ...), (1080, ...).
    quality_ladder: tuple = ((128, 250_000, 400_000), (256, 500_000, 800_000), (384, 900_000, 1_500_000))
    # The rung auto starts on ("high" = the top): one below it, so a loaded machine is not first asked for
    # 2.25x the pixels; the controller climbs when calm readings predict the bigger rung fits.
    quality_start: str = "256p"
    # Down one notch after `quality_bad_reads` unhealthy stats readings in a row (one per stats_interval_s): a
    # smaller height for compute trouble, the lean preset first for network trouble; readings in the first
    # `quality_settle_s` after a change do not count (the 2 s fps window still holds the old rung). Up one
    # notch after `quality_up_after_s` of calm readings, only if the bigger rung's predicted encode / decode
    # time (scaled by its pixels) stays under the limit.
    quality_bad_reads: int = 2
    quality_settle_s: float = 2.0
    quality_up_after_s: float = 3.0
    quality_warmup_s: float = 3.0  # no decision before the fps window covers the session
    # Unhealthy (any): fps_actual < quality_fps_low x fps_target; the model misses its slot (scheduler late
    # ticks) >= quality_late_per_s; encode p95 or the page's decode time > quality_busy x the frame period
    # (little headroom); rtt > quality_rtt_ms or RTCP loss > quality_loss_pct (network). Calm (all): fps_actual
    # >= quality_fps_high x target, no late ticks, every other figure <= quality_calm x its limit.
    quality_fps_low: float = 0.9
    quality_fps_high: float = 0.95
    quality_late_per_s: float = 0.5
    quality_busy: float = 0.6
    quality_rtt_ms: float = 300.0
    quality_loss_pct: float = 5.0
    quality_calm: float = 0.7
    max_message_bytes: int = 4096  # one `ctl` message; bigger ones get a `too_large` error reply
    stats_interval_s: float = 1.0
    fps_range: tuple = (1.0, 120.0)  # allowed fps_target (worldlab serve --fps)
    # Serving limits and guards (worldlab.server, worldlab.transport.peer).
    # The data channel advertises this as its SCTP max-message-size; a peer that sends a bigger message
    # is disconnected as soon as the partial message passes it (aiortc would otherwise reassemble any size).
    sctp_max_message_bytes: int = 16384
    max_json_depth: int = 16  # deeper `ctl` messages or /offer bodies are refused before json.loads
    max_offer_bytes: int = 64 * 1024  # POST /offer body
    offer_read_timeout_s: float = 10.0  # the whole /offer body must arrive within this
    max_sessions: int = 8  # live rooms (players) per server; the next offer gets 503 server_full
    # Load shedding (worldlab.transport.shedding), off at 0: a new player gets 503 server_busy while a session
    # that has streamed >= 3 s gets fewer new frames a second than this share of its fps_target, or while the
    # model worker, busy this share of the last 2 s, would be past it with one more session (scaled linearly).
    shed_below_fps: float = 0.0
    shed_model_load: float = 0.0
    max_viewers_per_room: int = 8  # spectators per room; the next gets 503 room_full
    # Cost controls (worldlab.transport.caps); 0 turns a cap off. Sessions without a token all count as the
    # one tenant "anonymous". Past a frame cap the room's peers get `error` frame_cap (with retry_after_s)
    # and the room ends (a paused room would still hold a session slot); new offers get 429 frame_cap.
    max_sessions_per_tenant: int = 0  # live rooms per tenant; the next offer gets 503 tenant_full
    room_frame_cap: int = 0  # model frames one room id may generate per frame_cap_window_s
    tenant_frame_cap: int = 0  # model frames all of one tenant's rooms may generate per frame_cap_window_s
    frame_cap_window_s: float = 3600.0
    caps_check_s: float = 1.0  # how often frames are charged and caps checked (a room may overshoot by this)
    # Anomaly alert (a warning log line + worldlab_anomalies_total{kind="model_seconds"}): a session whose
    # model-seconds per wall second exceed this share, or this multiple of the median of >= 3 sessions.
    anomaly_model_share: float = 0.5
    anomaly_median_factor: float = 3.0
    # ... and (kind="relay_share") when the percent of connected peers whose media goes through a TURN relay
    # rises above this (relays bill per byte; a jump means a network change pushed users off direct paths).
    anomaly_relay_pct: float = 50.0
    # Graceful drain (SIGTERM or POST /admin/drain): no new offers (503 draining), peers get `drain` with
    # deadline_s, rooms still live at the deadline end with `error` drained, then `worldlab serve` exits 0.
    drain_deadline_s: float = 25.0  # under Kubernetes' default 30 s grace: we exit before its SIGKILL
    # A peer that has not reached "connected" this long after its answer is dropped (and its room, for a
    # player). Connected peers that vanish (network or DTLS dead, no goodbye) fail ICE consent freshness:
    # `consent_failures` unanswered checks `consent_interval_s` apart (+-20 %, each check waits 0.5 s), about
    # 10 s instead of aioice's 30 s; a 3 s outage (3 misses at most) survives.
    connect_timeout_s: float = 15.0
    consent_interval_s: float = 1.5
    consent_failures: int = 5
    # Until consent fails, a room whose every connected peer has sent no RTCP report (receivers send one every
    # ~0.5-1.5 s) for this long idles: two probe frames a second and no model steps, then its full rate again
    # (from a keyframe) at the next report. 5 s: longer than the 3 s outage above plus a report interval, so an
    # outage that consent survives costs no extra recovery; a dead client's room still stops costing a stream
    # 2.5-5 s sooner (docs/streaming.md, Memory under churn). 0: never.
    peer_silence_s: float = 5.0
    # Faults (worldlab.engine.scheduler, worldlab.transport.peer): a session whose model call (step, recache)
    # has run this long ends with model_stalled (~600x a tiny-model step on CPU: a loaded 2-core machine or a
    # slow first call must never look like a stall; its batch-mates wait only batch_timeout_s, below); an
    # ended session's peers get their `error` fault_grace_s before the room closes.
    step_timeout_s: float = 2.0
    # Input-aware tick phase (worldlab.engine.scheduler): a key change that would wait more than
    # early_tick_min_ms for its session's next tick is stepped at once (instead of up to a period later); the
    # phase gained is paid back by stretching that session's next intervals by at most early_tick_repay x a
    # period, so frames per second (world time) stay exact and the session rejoins the shared grid for
    # micro-batching. A session is never more than one period ahead of the grid.
    early_tick: bool = True
    early_tick_min_ms: float = 4.0
    early_tick_repay: float = 0.125
    # Steady send (worldlab.transport.track): at fps_target >= steady_send_min_fps each new frame's packet is held
    # until its tick's due instant + the p90 of recent (due -> encoded) lags, so the send cadence no longer
    # inherits step + encode jitter (a few ms more than the last frame is a > 20 ms interval at 60 fps). Off
    # below it: at 30 fps the early tick's latency gain matters more than the cadence.
    steady_send_min_fps: float = 50.0
    # A tick waits for a step at most max(batch_timeout_s, batch_timeout_factor x the slowest of the last 30
    # steps) (3 frames at 30 fps): past it, the sessions in a batch are rebuilt from their recent frames and go
    # on alone on their own threads (a stall costs the others that wait once); a session alone waits for its
    # call in flight up to step_timeout_s. A suspect rejoins the batch after suspect_steps clean steps.
    batch_timeout_s: float = 0.1
    batch_timeout_factor: float = 5.0
    suspect_steps: int = 90
    fault_grace_s: float = 0.25
    room_id_bytes: int = 16  # random bytes in a server-chosen room id (secrets.token_urlsafe)
    # Data-channel messages per peer connection (worldlab.security.ratelimit token buckets): (type, sustained
    # per second, burst). Over it: an `error` rate_limited and the message is dropped. The page sends an
    # action only when the held keys change, a ping every 500 ms and a report every second.
    ctl_rate_limits: tuple = (("action", 60.0, 120), ("prompt", 1.0, 5), ("ping", 10.0, 20), ("report", 2.0, 5),
                              ("quality", 2.0, 5))
    rate_flag_every: int = 100  # every Nth dropped message of a session is flagged for review
    # Triage buffer (worldlab.security.ringbuffer): the last seconds of each session's packets and inputs,
    # encrypted in memory, sealed to disk when the session is flagged or an admin asks.
    triage_seconds: float = 45.0
    triage_max_bytes: int = 16 << 20
    # Access (worldlab.security): tokens, and POST /offer per client IP (a token bucket; more get 429).
    token_ttl_s: int = 24 * 3600  # `worldlab token` default and the start-up link of `worldlab serve --auth`
    offer_rate_per_s: float = 2.0  # sustained offers per client IP
    offer_burst: int = 10  # offers a client IP may make back to back before the rate applies
    rate_limit_max_keys: int = 10_000  # keys (client IPs, sessions) a rate limit remembers; least recent go first
    # Provenance (worldlab.security.watermark): a random 64-bit id per session hidden in every frame.
    watermark: bool = True
    watermark_key: str = "worldlab-watermark-v1"  # seeds the pattern; `worldlab verify` must use the same
    # Sound (worldlab.engine.audio): an Opus track on the same peer connection and clock as the video, a click
    # when a sprite visibly bounces and a tone pitched by the agent's x (`worldlab serve --audio on|off`).
    audio: bool = True
    # Chrome plays WebRTC audio ~90 ms after the video it belongs to (its audio jitter buffer and output latency;
    # the video is shown at once: playout delay 0). A bounce the world's motion foresees is clicked this much
    # before its frame's pts, so both reach the viewer together (docs/streaming.md, Audio). 0: exactly at the pts.
    audio_lead_ms: float = 90.0
    # Observability (worldlab.telemetry, worldlab.server.metrics). Spans go to the OTLP/HTTP endpoint when one
    # is set, else as JSON lines to `otel_jsonl`; neither: no tracing at all (nothing is recorded per frame).
    otel_endpoint: str = ""  # e.g. http://127.0.0.1:4318/v1/traces
    otel_jsonl: str = ""  # a file path
    slo_g2g_ms: float = 100.0  # a room meets its SLO while its page's p95 g2g is at most this
    # Bucket bounds (ms) of the per-stage latency histograms on /metrics: 1 ms steps matter at the low end
    # (encode, queue), 100s of ms for g2g on a loaded machine.
    latency_buckets_ms: tuple = (1, 2, 5, 10, 15, 20, 30, 40, 50, 60, 80, 100, 150, 200, 300, 500, 1000)
    # ICE for the page (worldlab.transport.ice, GET /ice): STUN/TURN servers as {urls, username?, credential?}
    # mappings. A TURN entry without a username gets short-lived credentials from `turn_secret` (coturn's
    # `use-auth-secret` REST scheme), so no long-lived TURN password reaches a browser. "relay" forces the page
    # through TURN (for testing a deployment's relay path). The server itself gathers host candidates only.
    ice_servers: tuple = ()
    ice_transport_policy: str = "all"  # "all" | "relay"
    turn_secret: str = ""
    turn_credential_ttl_s: float = 3600.0
    # Memory of a server that is never empty (worldlab.allocator; docs/streaming.md "Memory under churn"): at
    # most this many glibc malloc arenas (0: glibc's default, 8 per core; MALLOC_ARENA_MAX in the environment
    # wins), and closed rooms' memory released (a full gc pass, then malloc_trim) every this many seconds while
    # rooms have closed in the last 30 s (0: never).
    malloc_arena_max: int = 2
    memory_release_interval_s: float = 5.0

    def __post_init__(self):
        object.__setattr__(self, "fps_range", tuple(self.fps_range))  # JSON round-trips give lists
        object.__setattr__(self, "ctl_rate_limits", tuple(tuple(r) for r in self.ctl_rate_limits))
        object.__setattr__(self, "quality_ladder", tuple(tuple(r) for r in self.quality_ladder))
        object.__setattr__(self, "latency_buckets_ms", tuple(self.latency_buckets_ms))
        object.__setattr__(self, "ice_servers", tuple(_ice_server(e) for e in self.ice_servers))
        if self.ice_transport_policy not in ICE_POLICIES:
            raise ValueError(f"ice_transport_policy must be one of {ICE_POLICIES}, got {self.ice_transport_policy!r}")
        if self.turn_credential_ttl_s <= 0:
            raise ValueError(f"turn_credential_ttl_s must be > 0, got {self.turn_credential_ttl_s!r}")
        for name in ("shed_below_fps", "shed_model_load"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 (off) and 1, got {getattr(self, name)!r}")
        if self.peer_silence_s < 0:
            raise ValueError(f"peer_silence_s must be >= 0 (0: never), got {self.peer_silence_s!r}")
        if self.malloc_arena_max < 0 or self.memory_release_interval_s < 0:
            raise ValueError("malloc_arena_max and memory_release_interval_s must be >= 0 (0: glibc's default / "
                             f"never), got {self.malloc_arena_max!r} and {self.memory_release_interval_s!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "SessionConfig":
        """A SessionConfig from field name -> value; an unknown name or a value of the wrong type raises
        ValueError naming the field and `source`."""
        if not isinstance(values, dict):
            raise ValueError(f"{source}: expected a mapping of SessionConfig fields, got {type(values).__name__}")
        types = {f.name: _FIELD_TYPES[f.type] for f in fields(cls)}
        for name, value in values.items():
            if name not in types:
                raise ValueError(f"{source}: unknown field {name!r} (SessionConfig fields: {', '.join(types)})")
            if not _is_a(value, types[name]):
                raise ValueError(f"{source}: field {name!r} must be {types[name].__name__}, got {value!r}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:  # e.g. ctl_rate_limits rows that are not sequences
            raise ValueError(f"{source}: {exc}") from None

    @classmethod
    def from_file(cls, path) -> "SessionConfig":
        """`worldlab serve --config FILE`: a YAML (or JSON, a subset of it) mapping of field -> value; fields
        left out keep their defaults. Unreadable or malformed files raise ValueError (one clear line)."""
        import yaml

        path = pathlib.Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {getattr(exc, 'strerror', None) or exc}") from None
        try:
            values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"config {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {detail}") from None
        return cls.from_dict({} if values is None else values, source=f"config {path}")


ICE_POLICIES = ("all", "relay")
ICE_SCHEMES = ("stun:", "stuns:", "turn:", "turns:")


def _ice_server(entry) -> dict:
    """One `ice_servers` entry checked: urls (a string or a list of stun:/turn: URLs), optional username and
    credential strings; the same shape RTCPeerConnection takes."""
    if not isinstance(entry, dict):
        raise ValueError(f"ice_servers entries must be mappings with 'urls', got {entry!r}")
    unknown = set(entry) - {"urls", "username", "credential"}
    if unknown:
        raise ValueError(f"ice_servers entry has unknown key(s) {sorted(unknown)} "
                         "(allowed: urls, username, credential)")
    urls = entry.get("urls")
    urls = [urls] if isinstance(urls, str) else urls
    if not urls or not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
        raise ValueError(f"ice_servers entry needs 'urls': a URL or a list of them, got {entry.get('urls')!r}")
    bad = [u for u in urls if not u.startswith(ICE_SCHEMES)]
    if bad:
        raise ValueError(f"ice_servers URL {bad[0]!r} is not a stun:, stuns:, turn: or turns: URL")
    for key in ("username", "credential"):
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f"ice_servers entry's {key!r} must be a string")
    return {**entry, "urls": list(urls)}


# Field annotation (a string under `from __future__ import annotations`) -> the Python type a config file
# value must have; int is accepted where a float is expected, a list where a tuple is.
_FIELD_TYPES = {"float": float, "int": int, "str": str, "bool": bool, "tuple": tuple}


def _is_a(value, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # True is an int to Python, never a number in a config file
        return False
    if kind is float:
        return isinstance(value, (int, float))
    if kind is tuple:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


@dataclass(frozen=True)
class ModelConfig:
    """Block-causal world transformer over sprite tokens: 3 tokens (agent, two objects) per frame."""

    name: str = "tiny"
    image_size: int = 64
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4  # head_dim = d_model / n_heads must be a multiple of 16 (NVFP4 KV blocks)
    mlp_ratio: int = 4
    clock_periods: tuple = (8, 16, 32)  # frame clock in each token (see transformer.clock_features)
    n_actions: int = 9
    n_themes: int = 4
    sink: int = 1  # frames kept forever (attention sink)
    # The pillar hides a 1 px/frame object fully for 4 frames; the block that predicts its return must read
    # the frame 4 back, where it was last seen. Short (4 frames, the newest included) reaches 3 back, so it
    # cannot bring the object back; long can (evaluate.occlusion_run scores exactly that).
    window_short: int = 4  # recent frames kept in the ring, "short" toggle (the live default)
    window_long: int = 16  # "long" toggle
    # Training draws one of these windows per batch. They need not be the toggles': trained at (4, 16) the
    # long window carried an object through the pillar exactly in 19 of 32 runs, trained at (6, 16) in 32 of
    # 32, and the short window scored the same either way (docs/model.md, "The window toggle").
    train_windows: tuple = (6, 16)
    # training
    seq_frames: int = 24  # > sink + window_long, so training sees the ring slide as streaming does
    batch: int = 32
    steps: int = 3000
    lr: float = 1e-3
    warmup: int = 100
    # Scheduled sampling: from this fraction of training on, a random suffix of each sequence's inputs is
    # the model's own rendered predictions (1..self_forcing_passes compounded passes); targets stay true.
    self_forcing_from: float = 0.5
    self_forcing_passes: int = 2
    # Hidden-object drill: in this fraction of sequences one object's input boxes read ABSENT for a span of
    # hide_frames[0]..hide_frames[1] frames (targets stay true), as if a cover hid it: the long window
    # learns to carry position and velocity through gaps the pillar alone never makes (<= 4 frames).
    hide_objects: float = 0.0
    hide_frames: tuple = (5, 14)
    # Fourier box coordinates: sin/cos of every box coordinate over these periods (px), projected and added
    # to the learned coordinate embeddings, so a shift of a position is a rotation of its features. () = off.
    coord_fourier: tuple = ()
    # Relative age in what attention reads: in every head the last 2 * len(value_age_periods) value channels
    # are rotated by the key frame's clock (one angle 2 pi f / P per period P) and the attention output by
    # minus the query frame's clock, so a head reading a frame `age` frames back reads its value rotated by
    # -2 pi age / P (a readout of the age, and of a position feature shifted by a velocity x age). Sink
    # frames' rotated channels are zero (their ALiBi age is clamped). () = off.
    value_age_periods: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "clock_periods", tuple(self.clock_periods))  # JSON round-trips give lists
        object.__setattr__(self, "hide_frames", tuple(self.hide_frames))
        object.__setattr__(self, "train_windows", tuple(self.train_windows))
        if len(self.train_windows) != 2 or any(isinstance(w, bool) or not isinstance(w, int) or w < 1
                                                for w in self.train_windows):
            raise ValueError(f"train_windows must be two positive integers, got {self.train_windows!r}")
        object.__setattr__(self, "coord_fourier", tuple(self.coord_fourier))
        object.__setattr__(self, "value_age_periods", tuple(self.value_age_periods))
        if 2 * len(self.value_age_periods) > self.d_model // self.n_heads:
            raise ValueError(f"value_age_periods needs 2 channels per period per head; head_dim is "
                             f"{self.d_model // self.n_heads}, got {len(self.value_age_periods)} periods")
        for name in ("coord_fourier", "value_age_periods"):
            bad = [p for p in getattr(self, name) if isinstance(p, bool) or not isinstance(p, int) or p < 1]
            if bad:
                raise ValueError(f"{name} must be positive integer periods, got {bad[0]!r}")

    @property
    def tokens_per_frame(self) -> int:
        return 3  # agent, object 0, object 1 (worldlab.model.sprites.SPRITE_CLASSES)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def window(self, which: str) -> int:
        if which not in ("short", "long"):
            raise ValueError(f"window must be 'short' or 'long', got {which!r}")
        return self.window_short if which == "short" else self.window_long

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    # micro: trains in ~35 s on 2 cores; for tests only (the agent roughly follows the keys: 8 px error).
    "micro": ModelConfig(name="micro", d_model=64, n_layers=2, n_heads=2, seq_frames=12, batch=16, steps=600,
                         lr=3e-3, warmup=10),
    # tiny: the shipped checkpoint.
    "tiny": ModelConfig(),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {sorted(PRESETS)}")
    return PRESETS[name]


# The three research toggles: the one list of allowed values and defaults (CLI choices, load_model, the
# widget's selects, the sweep's grid check all read these).
TOGGLE_CHOICES = {
    "weights": ("fp32", "w8a8", "w4a4"),  # weights/activations: fp32, 8-bit FP8 E4M3, 4-bit NVFP4
    "window": ("short", "long"),  # attention window: ModelConfig.window_short / window_long frames
    "kv": ("none", "fp8", "nvfp4"),  # KV cache storage
}


@dataclass(frozen=True)
class Toggles:
    """One setting of the three research toggles; construction validates every value."""

    weights: str = "fp32"
    window: str = "short"
    kv: str = "none"

    def __post_init__(self):
        for name, allowed in TOGGLE_CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        return f"{self.weights} / {self.window} / kv {self.kv}"
