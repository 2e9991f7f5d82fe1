"""Recipes: YAML files that set values of the typed config tree, plus ``key=value`` overrides.

Merging happens in OmegaConf's structured mode against :class:`trainers.config.Config`, so an unknown key or a
value of the wrong type fails immediately; the error names the key and suggests the closest valid one.
A recipe may name another with ``base: NAME`` and override a few values on top of it.
"""
from __future__ import annotations

import difflib
from pathlib import Path

from trainers.config import Config

RECIPES_DIR = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A config problem found before any expensive work started."""


def available() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _all_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    keys = []
    for k in node.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        child = OmegaConf.select(node, str(k)) if isinstance(node, DictConfig) else None
        if isinstance(child, DictConfig) and OmegaConf.get_type(child) is not dict:
            keys += _all_keys(child, full + ".")
    return keys


def _suggest(bad_key: str) -> str:
    from omegaconf import OmegaConf

    keys = _all_keys(OmegaConf.structured(Config))
    close = difflib.get_close_matches(bad_key, keys, n=1, cutoff=0.5)
    if not close:  # try the last path component against every leaf name
        leaf = bad_key.rsplit(".", 1)[-1]
        close = [k for k in keys if k.rsplit(".", 1)[-1] in difflib.get_close_matches(leaf, [x.rsplit(".", 1)[-1] for x in keys], n=1)]
    return f"; did you mean {close[0]!r}?" if close else ""


def _load_yaml(name_or_path: str, seen: tuple = ()) -> list:
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        close = difflib.get_close_matches(str(name_or_path), available(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"recipe {name_or_path!r} not found (looked for {path}){hint} Available: {available()}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # malformed YAML: name the file and what the parser said
        raise ConfigError(f"recipe file {path} is not valid YAML: {e}") from e
    if not hasattr(node, "keys"):
        raise ConfigError(f"recipe file {path} must be a mapping of config keys, got {type(node).__name__}")
    base = node.pop("base", None)
    if base is None:
        return [(path, node)]
    if base in seen:
        raise ConfigError(f"recipe {path} has a base cycle through {base!r}")
    return _load_yaml(str(base), seen + (str(name_or_path),)) + [(path, node)]


def _merge(cfg, node, origin: str):
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        return OmegaConf.merge(cfg, node)
    except ConfigKeyError as e:
        key = e.full_key or str(e.key)
        raise ConfigError(f"unknown config key {key!r} in {origin}{_suggest(key)}") from None
    except ValidationError as e:
        raise ConfigError(f"wrong type for {e.full_key!r} in {origin}: {e.msg}") from None


def load(recipe: str | None, overrides: list[str]) -> tuple[Config, str]:
    """-> (typed Config, resolved YAML text). ``recipe`` None means the embedded default."""
    from omegaconf import OmegaConf

    name = recipe or "tiny_dler"  # the flagship: DLER length reward + the online drafter
    cfg = OmegaConf.structured(Config)
    for path, node in _load_yaml(name):
        if OmegaConf.select(node, "reward.terms") is not None:
            cfg.reward.terms = {}  # a recipe's reward terms are its whole reward, not additions to its base's
        cfg = _merge(cfg, node, f"recipe file {path}")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        try:  # ``key=`` sets an empty string (OmegaConf would read None, which no typed field takes)
            dot = OmegaConf.from_dotlist([item + "''" if item.endswith("=") else item])
        except Exception as e:
            raise ConfigError(f"override {item!r} could not be parsed: {e}") from None
        if item.split("=", 1)[0].strip() == "reward.terms":
            cfg.reward.terms = {}  # reward.terms={a: 1.0, ...} is the whole reward; reward.terms.a=1.0 adds or sets one
        cfg = _merge(cfg, dot, f"override {item!r}")
    cfg.recipe = Path(name).stem
    obj: Config = OmegaConf.to_object(cfg)
    return obj, OmegaConf.to_yaml(cfg)
