"""Training recipes: named, complete sets of hyper-parameters.

`seed` reproduces the published baseline (plain SGD at lr 0.01, stretched resize, RGB, 5 epochs, no
augmentation). `default` is the recipe chosen on the group-aware validation split; docs/recipes.md records what
each ingredient gave. The `ablate-*` recipes switch one ingredient off, to measure it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9
    weight_decay: float = 0.05
    epochs: int = 40
    batch_size: int = 64
    warmup_epochs: float = 2.0
    schedule: Literal["constant", "cosine"] = "cosine"
    label_smoothing: float = 0.1
    balance: Literal["none", "sqrt"] = "sqrt"  # sampling weight per image ~ 1/sqrt(class size)
    augment: bool = True
    resize: Literal["pad", "stretch"] = "pad"
    channels: Literal["grey", "rgb"] = "grey"

    def to_dict(self) -> dict:
        return asdict(self)


_DEFAULT = Recipe(name="default")

RECIPES: dict[str, Recipe] = {
    "seed": Recipe(
        name="seed",
        optimizer="sgd",
        lr=0.01,
        momentum=0.0,
        weight_decay=0.0,
        epochs=5,
        batch_size=32,
        warmup_epochs=0.0,
        schedule="constant",
        label_smoothing=0.0,
        balance="none",
        augment=False,
        resize="stretch",
        channels="rgb",
    ),
    "default": _DEFAULT,
    "ablate-augment": replace(_DEFAULT, name="ablate-augment", augment=False),
    "ablate-balance": replace(_DEFAULT, name="ablate-balance", balance="none"),
    "ablate-smoothing": replace(_DEFAULT, name="ablate-smoothing", label_smoothing=0.0),
    "ablate-pad-grey": replace(_DEFAULT, name="ablate-pad-grey", resize="stretch", channels="rgb"),
    "sgd-cosine": replace(_DEFAULT, name="sgd-cosine", optimizer="sgd", lr=0.1, weight_decay=5e-4),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
