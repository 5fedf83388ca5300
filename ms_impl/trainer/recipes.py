"""Recommended recipes: per-recipe values (the options recipe_frozen, recipe_finetune of trainer/schema.py, or a
config file's), chosen from --pretrained / --freeze-backbone.

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


def resolve_name(cfg) -> Tuple[str, str]:
    """(recipe, why): the recipe the config asks for, `auto` resolved."""
    if cfg.recipe != "auto":
        return cfg.recipe, f"--recipe {cfg.recipe}"
    if cfg.pretrained and cfg.freeze_backbone:
        return "frozen", "auto: --pretrained with --freeze-backbone true"
    if cfg.pretrained:
        return "finetune", "auto: --pretrained without --freeze-backbone"
    return "scratch", "auto: no --pretrained"


def apply_recipe(cfg, explicit: Iterable[str]) -> Dict[str, object]:
    """Resolve `cfg.recipe` in place and copy its values into `cfg`, except keys in `explicit`.

    The recipe's values were checked with the rest of the config, each by its own key's schema option."""
    name, why = resolve_name(cfg)
    if name in ("frozen", "finetune") and not cfg.pretrained:
        raise UsageError(f"--recipe {name}: needs --pretrained weights")
    values = cfg[f"recipe_{name}"] if name != "scratch" else {}
    explicit = set(explicit)
    applied: Dict[str, object] = {key: value for key, value in values.items() if key not in explicit}
    cfg.update(applied)
    cfg.recipe = name
    cfg.recipe_reason = why
    cfg.recipe_applied = applied
    return applied


def describe(cfg) -> str:
    """One log line: the recipe, why, and what it set."""
    values = ", ".join(f"{k}={v}" for k, v in cfg.get("recipe_applied", {}).items())
    return f"recipe: {cfg.recipe} ({cfg.get('recipe_reason', '')}){': ' + values if values else ''}"
