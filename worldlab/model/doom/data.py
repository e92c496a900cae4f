"""Explorer episodes of a DOOM map as training data: raw frames (the game's own colours), action ids, poses,
cached to an .npz keyed by its parameters; styles are applied on the fly so one dataset serves every style.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import asdict, dataclass

import numpy as np

from worldlab import env
from worldlab.doom import DEFAULT_MAP, STYLES, apply_style, check_map, explore

# Seeds at or above this are held out: no training set may contain one (DoomData checks it).
HELDOUT_SEED_MIN = 100_000
CACHE_VERSION = 1  # bump when the stored layout or the explorer changes, so stale caches are not reused
DEFAULT_CACHE = pathlib.Path(os.environ.get("WORLDLAB_CACHE", "~/.cache/worldlab")).expanduser() / "doom"


@dataclass(frozen=True)
class DoomData:
    """Which episodes: `episodes` explorer runs of `steps` steps on `map`, seeds first_seed.. (one per episode)."""

    map: str = DEFAULT_MAP
    first_seed: int = 0
    episodes: int = 64
    steps: int = 300

    def __post_init__(self):
        check_map(self.map)
        if self.episodes < 1 or self.steps < 1 or self.first_seed < 0:
            raise ValueError(f"DoomData needs episodes >= 1, steps >= 1, first_seed >= 0: {self}")

    @property
    def seeds(self) -> range:
        return range(self.first_seed, self.first_seed + self.episodes)

    @property
    def heldout(self) -> bool:
        """True for a held-out set; a set straddling HELDOUT_SEED_MIN is neither and is refused."""
        lo, hi = self.seeds[0] >= HELDOUT_SEED_MIN, self.seeds[-1] >= HELDOUT_SEED_MIN
        if lo != hi:
            raise ValueError(f"seeds {self.seeds.start}..{self.seeds.stop - 1} straddle the held-out boundary "
                             f"{HELDOUT_SEED_MIN}")
        return lo

    def key(self) -> str:
        import vizdoom

        return (f"{self.map}-s{self.first_seed}-e{self.episodes}-t{self.steps}"
                f"-vzd{vizdoom.__version__}-v{CACHE_VERSION}")


def train_data(episodes: int = 64, steps: int = 300, map: str = DEFAULT_MAP) -> DoomData:
    data = DoomData(map, 0, episodes, steps)
    if data.heldout or data.seeds[-1] >= HELDOUT_SEED_MIN:
        raise ValueError(f"training episodes must use seeds below {HELDOUT_SEED_MIN}")
    return data


def heldout_data(episodes: int = 8, steps: int = 300, map: str = DEFAULT_MAP) -> DoomData:
    return DoomData(map, HELDOUT_SEED_MIN, episodes, steps)


@dataclass
class Episodes:
    """frames (E, T + 1, 48, 64, 3) uint8 raw; actions (E, T) int8 ids (env.ACTION_KEYS); poses (E, T + 1, 3)."""

    data: DoomData
    frames: np.ndarray
    actions: np.ndarray
    poses: np.ndarray

    def sample(self, rng: np.random.Generator, n: int, styles=STYLES) -> tuple[np.ndarray, np.ndarray]:
        """n random frames, each in a style drawn uniformly from `styles` -> (frames (n, H, W, 3), style ids)."""
        e = rng.integers(0, self.frames.shape[0], n)
        t = rng.integers(0, self.frames.shape[1], n)
        s = rng.integers(0, len(styles), n)
        return styled(self.frames[e, t], [styles[i] for i in s]), s


def styled(frames: np.ndarray, styles) -> np.ndarray:
    """Raw frames (n, H, W, 3) and one style name per frame -> the styled frames (n, H, W, 3) uint8."""
    out = np.empty_like(frames)
    for style in set(styles):
        idx = [i for i, s in enumerate(styles) if s == style]
        out[idx] = apply_style(frames[idx], style)
    return out


def generate(data: DoomData) -> Episodes:
    frames, actions, poses = [], [], []
    for seed in data.seeds:
        f, keys, p = explore(data.map, seed, data.steps)
        frames.append(f)
        actions.append([env.action_id(k) for k in keys])
        poses.append(p)
    return Episodes(data, np.stack(frames), np.array(actions, np.int8), np.stack(poses))


def load(data: DoomData, cache_dir=DEFAULT_CACHE) -> Episodes:
    """The episodes of `data`, from the cache when present (else generated and cached); cache_dir None: no cache."""
    if cache_dir is None:
        return generate(data)
    path = pathlib.Path(cache_dir).expanduser() / f"{data.key()}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Episodes(data, z["frames"], z["actions"], z["poses"])
    eps = generate(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")  # written whole, then renamed: a killed run leaves no half cache
    np.savez_compressed(tmp, frames=eps.frames, actions=eps.actions, poses=eps.poses, **{
        f"param_{k}": v for k, v in asdict(data).items()})
    tmp.replace(path)
    return eps
