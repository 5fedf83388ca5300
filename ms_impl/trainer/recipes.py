"""Recommended recipes: per-recipe defaults from the config file, chosen from --pretrained / --freeze-backbone.

    recipe: auto        # frozen   when pretrained and freeze_backbone
                        # finetune when pretrained alone
                        # scratch  otherwise (the file's top-level values as they are)
    recipe_frozen:   {epochs: 30, ...}   # values replacing the top-level keys for that recipe
    recipe_finetune: {epochs: 6, ...}

A key given on the command line always wins over the recipe's value. The
resolved name replaces `recipe` in the config, and the values the recipe set
are kept in `recipe_applied`: the log says what ran, and the run's config.yaml
saves just those as `recipe_<name>`, so reading it back reproduces the run.
"""
from __future__ import annotations

from typing import Dict, Iterable, Tuple

from ms_impl.trainer.errors import UsageError

RECIPES = ("auto", "scratch", "frozen", "finetune")


def resolve_name(cfg) -> Tuple[str, str]:
    """(recipe, why): the recipe the config asks for, `auto` resolved."""
    if cfg.recipe != "auto":
        return cfg.recipe, f"--recipe {cfg.recipe}"
    if cfg.pretrained and cfg.freeze_backbone:
        return "frozen", "auto: --pretrained with --freeze-backbone true"
    if cfg.pretrained:
        return "finetune", "auto: --pretrained without --freeze-backbone"
    return "scratch", "auto: no --pretrained"


def apply_recipe(cfg, explicit: Iterable[str], source: str) -> Dict[str, object]:
    """Resolve `cfg.recipe` in place and copy its values into `cfg`, except keys in `explicit`."""
    name, why = resolve_name(cfg)
    if name in ("frozen", "finetune") and not cfg.pretrained:
        raise UsageError(f"--recipe {name}: needs --pretrained weights")
    values = cfg.get(f"recipe_{name}", {}) if name != "scratch" else {}
    if not isinstance(values, dict):
        raise UsageError(f"{source}: recipe_{name} must be a mapping of keys to values")
    explicit = set(explicit)
    applied: Dict[str, object] = {}
    for key, value in values.items():
        if key not in cfg or key.startswith("recipe"):
            raise UsageError(f"{source}: recipe_{name} sets unknown key {key!r}")
        default = cfg[key]
        if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, (type(default), int) if isinstance(default, float) else type(default)):
            raise UsageError(f"{source}: recipe_{name}.{key} must be a {type(default).__name__} like {key}, got {value!r}")
        if key not in explicit:
            cfg[key] = type(default)(value)
            applied[key] = cfg[key]
    cfg.recipe = name
    cfg.recipe_reason = why
    cfg.recipe_applied = applied
    return applied


def describe(cfg) -> str:
    """One log line: the recipe, why, and what it set."""
    values = ", ".join(f"{k}={v}" for k, v in cfg.get("recipe_applied", {}).items())
    return f"recipe: {cfg.recipe} ({cfg.get('recipe_reason', '')}){': ' + values if values else ''}"
