"""Model plug-ins: `--model NAME|PATH|module:factory` names a WorldModel factory, built in or registered by
any installed package under the entry-point group `worldlab.models` (docs/byom.md).

A factory is called as factory(toggles=Toggles, device=str, checkpoint=str|None) and returns a WorldModel;
its optional attributes: `supports` (toggle name -> allowed values it can honour) and `default_checkpoint`
(the file it loads when given none: hashed for provenance and the sweep cache).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pathlib
import re
from dataclasses import dataclass
from typing import Any, Callable

from worldlab.config import TOGGLE_CHOICES, Toggles
from worldlab.model.protocol import ModelError, conformance_error, frames_error

GROUP = "worldlab.models"
CHECKPOINT_MODEL = "tiny"  # the architecture a bare checkpoint path is loaded as when its metadata does not say
ARCHITECTURE_KEYS = {"conv": "conv", "worldlab": "tiny", "config": "tiny", "doom_world_model": "doom"}  # checkpoint metadata key -> model
# checkpoint metadata key -> what the file holds, for one-line refusals that name it
HOLDS = {"conv": "a conv world model", "worldlab": "a tiny transformer", "config": "a tiny transformer",
         "doom_tokenizer": "a DOOM tokenizer (autoencoder)", "doom_world_model": "a DOOM world model"}
PARTS = ("doom_tokenizer",)  # model parts, not world models: the model that uses one loads it, never --model
PROBE_PROMPT = "a walk in the forest"
_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class Plugin:
    """One loadable model: a display name, its factory and (for checkpoint paths) the file to load."""

    name: str
    factory: Callable[..., Any]
    checkpoint: str | None = None
    source: str = "built-in"  # built-in | entry point of <distribution> | module:factory | checkpoint

    @property
    def supports(self) -> dict[str, tuple]:
        declared = getattr(self.factory, "supports", None) or {}
        return {name: tuple(declared.get(name, allowed)) for name, allowed in TOGGLE_CHOICES.items()}

    @property
    def description(self) -> str:
        doc = (getattr(self.factory, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    def checkpoint_file(self, checkpoint=None) -> pathlib.Path | None:
        """The file this model loads: `checkpoint`, the plug-in's own, or the factory's default (None: no file)."""
        path = checkpoint or self.checkpoint or getattr(self.factory, "default_checkpoint", None)
        return pathlib.Path(path) if path else None

    def check(self, toggles: Toggles) -> None:
        """ValueError naming the first toggle value this model cannot honour (one clear line)."""
        for name, allowed in self.supports.items():
            if getattr(toggles, name) not in allowed:
                raise ValueError(f"model {self.name!r} does not support {name}={getattr(toggles, name)!r} "
                                 f"(it supports {name}: {', '.join(allowed)})")

    def build(self, toggles: Toggles = Toggles(), device: str = "cpu", checkpoint: str | None = None):
        """The WorldModel for these toggles; the model remembers this plug-in and the toggles it was built
        with (`model.plugin`, `model.toggles`) so toggle variants (the widget, the served page) are rebuilt
        from the same factory and checkpoint."""
        self.check(toggles)
        try:
            model = self.factory(toggles=toggles, device=device, checkpoint=checkpoint or self.checkpoint)
        except (ValueError, FileNotFoundError) as exc:  # the factory's own one-line refusal (a bad checkpoint...)
            raise ValueError(str(exc)) from None
        except Exception as exc:
            raise ValueError(f"model {self.name!r} failed to build: {_one_line(exc)}") from None
        problem = conformance_error(model) or _probe(model)
        if problem:
            raise ModelError(f"model {self.name!r} {problem}")
        try:
            model.plugin, model.toggles = self, toggles
        except AttributeError:  # a model with __slots__: variants fall back to its own toggles only
            pass
        return model


def _probe(model) -> str | None:
    """One prefill and step on a throwaway session, so a model whose frames break the protocol is refused when
    it is built, by name, rather than mid-stream. None when the frames are right; otherwise what was wrong."""
    import numpy as np

    from worldlab import env

    shape = tuple(model.frame_shape)
    frames = env.rollout(0, env.theme_for_prompt(PROBE_PROMPT), [()]) if shape == (env.SIZE, env.SIZE, 3) else np.zeros((2, *shape), np.uint8)
    try:
        state = model.init_state(PROBE_PROMPT)
        model.prefill(state, frames, [()])
        return frames_error(model.step([state], [()]), 1, shape)
    except Exception as exc:
        return f"failed its first step: {_one_line(exc)}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def registered() -> dict[str, importlib.metadata.EntryPoint]:
    """Entry points of the `worldlab.models` group by name (the project's own models are registered there too)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def available() -> list[Plugin]:
    """Every registered model that imports; one that fails to import is skipped (see `resolve` for its error)."""
    out = []
    for name in sorted(registered()):
        try:
            out.append(resolve(name))
        except ValueError:
            continue
    return out


def resolve(spec: str) -> Plugin:
    """A plug-in from a registered name, a `module:factory` path or a checkpoint file; ValueError otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--model is empty: give a model name (see `worldlab models`), a checkpoint file or module:factory")
    spec = spec.strip()
    eps = registered()
    if spec in eps:
        ep = eps[spec]
        dist = getattr(ep.dist, "name", None)
        source = "built-in" if dist == "worldlab" else f"entry point of {dist or 'an installed package'}"
        return Plugin(spec, _load(ep.value, lambda: ep.load()), source=source)
    if _FACTORY_SPEC.match(spec) and not pathlib.Path(spec).exists():
        module, attr = spec.split(":")
        return Plugin(spec, _load(spec, lambda: getattr(importlib.import_module(module), attr)),
                      source="module:factory")
    path = pathlib.Path(spec).expanduser()
    if path.suffix == ".safetensors" or path.exists():
        if not path.is_file():
            raise ValueError(f"no checkpoint file at {path}")
        base = resolve(checkpoint_architecture(path) or CHECKPOINT_MODEL)
        return Plugin(str(path), base.factory, checkpoint=str(path), source="checkpoint")
    known = ", ".join(sorted(eps)) or "none registered"
    raise ValueError(f"unknown model {spec!r}: not a registered name ({known}), a checkpoint file or module:factory")


def checkpoint_architecture(path) -> str | None:
    """The built-in model that wrote a checkpoint, from its metadata keys (None: unreadable or not ours)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = set(f.metadata() or {})
    except Exception:  # the loader reports an unreadable file with its own message
        return None
    return next((name for key, name in ARCHITECTURE_KEYS.items() if key in keys), None)


def checkpoint_holds(metadata: dict) -> str:
    """What a checkpoint holds, named from its safetensors metadata keys (for refusals that say so)."""
    return next((what for key, what in HOLDS.items() if key in metadata), "no worldlab model")


def refuse_part(path, metadata: dict, expected: str) -> None:
    """One-line ValueError when the checkpoint holds a model part (e.g. the DOOM tokenizer) where `expected`
    (a world model) was asked for."""
    part = next((key for key in PARTS if key in metadata), None)
    if part is not None:
        raise ValueError(f"checkpoint {path} holds {HOLDS[part]}, not {expected}: it is a part of a model, "
                         f"not a world model to load by itself")


def _load(what: str, load: Callable[[], Any]):
    try:
        factory = load()
    except Exception as exc:  # ImportError, or whatever the plug-in's module raises while it imports
        raise ValueError(f"cannot load model factory {what!r}: {_one_line(exc)}") from None
    if not callable(factory):
        raise ValueError(f"model factory {what!r} is not callable")
    return factory


def plugin_of(model) -> Plugin | None:
    """The plug-in a model was built by (None for a model built by hand)."""
    return getattr(model, "plugin", None)


def toggles_of(model) -> Toggles | None:
    """The toggles a model runs with: what its plug-in built it with, else its own `toggles` (None: it has none)."""
    toggles = getattr(model, "toggles", None)
    return toggles if isinstance(toggles, Toggles) else None


def resolve_device(name: str = "auto") -> str:
    """`--device auto|cpu|cuda[:N]` -> a torch device string; auto is CUDA when present. One-line ValueError
    for a malformed name or a CUDA device this machine does not have."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not match:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__} "
                         f"{'is a CPU build' if torch.version.cuda is None else 'sees none'}); use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name
