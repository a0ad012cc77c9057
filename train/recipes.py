"""Training recipes: named, complete sets of hyper-parameters.

`seed` reproduces the published baseline (plain SGD at lr 0.01, stretched resize, RGB, 5 epochs, no
augmentation). `default` is the recipe chosen on the group-aware validation split; docs/recipes.md records what
each ingredient gave. The `ablate-*` recipes switch one ingredient of `adamw` off, to measure it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

from mri44.errors import SettingError


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
    ema_decay: float = 0.0  # > 0: evaluate and keep an exponential moving average of the weights
    mixup_alpha: float = 0.0  # > 0: mixup with lambda ~ Beta(alpha, alpha)
    # Knowledge distillation (needs --teacher): loss = (1 - w) * CE + w * T^2 * KL(teacher_T || student_T),
    # the teacher seeing the same augmented batch as the student.
    kd_weight: float = 0.0
    kd_temperature: float = 2.0
    backbone_lr_factor: float = 1.0  # the pretrained body's lr as a share of the head's (fc) lr
    # > 0: tumour-type and contrast heads beside the 44-way one, their cross-entropy at this weight in the loss
    # (train/aux_heads.py; training only, the exported network is the plain one)
    aux_weight: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


_ADAMW = Recipe(name="adamw")

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
    "adamw": _ADAMW,
    "adamw-ema": replace(_ADAMW, name="adamw-ema", ema_decay=0.997),
    "adamw-ema-mixup": replace(_ADAMW, name="adamw-ema-mixup", ema_decay=0.997, mixup_alpha=0.2),
    "sgd-ema": replace(_ADAMW, name="sgd-ema", optimizer="sgd", lr=0.1, weight_decay=5e-4, ema_decay=0.997),
    "ablate-augment": replace(_ADAMW, name="ablate-augment", augment=False),
    "ablate-balance": replace(_ADAMW, name="ablate-balance", balance="none"),
    "ablate-smoothing": replace(_ADAMW, name="ablate-smoothing", label_smoothing=0.0),
    "ablate-pad-grey": replace(_ADAMW, name="ablate-pad-grey", resize="stretch", channels="rgb"),
    "ablate-pad": replace(_ADAMW, name="ablate-pad", resize="stretch"),
}
# The default is `adamw` with stretched input: at 128 px, stretching beat letterboxing by +0.050 (grey) and
# +0.033 (RGB) validation macro-F1 (docs/recipes.md). The shipped model predates this and used letterboxing.
RECIPES["default"] = replace(RECIPES["adamw"], name="default", resize="stretch")


# The shipped ResNet-18: `default` plus distillation from the fine-tuned ImageNet ResNet-50 (--teacher).
RECIPES["distill"] = replace(RECIPES["default"], name="distill", kd_weight=0.7, kd_temperature=2.0, epochs=15)
# The student with tumour-type and contrast heads beside its 44-way one (issue 29's factored head).
RECIPES["distill-aux"] = replace(RECIPES["distill"], name="distill-aux", aux_weight=0.3)
# The student on mixed views (issue 29's "more patient student"): mixup at alpha 0.2 on the stored views, the
# soft label of a mixed view the same mix of the two views' soft labels (train/distill.py mix_log_probs).
RECIPES["distill-mix"] = replace(RECIPES["distill"], name="distill-mix", mixup_alpha=0.2)
# Fine-tuning ImageNet weights (the ResNet-50 teacher): a tenth of the from-scratch learning rate, short.
RECIPES["finetune"] = replace(RECIPES["default"], name="finetune", lr=5e-4, epochs=8, warmup_epochs=1.0)
# The late stages of an ImageNet network on cached frozen features (--freeze-through layer3): the project owners'
# probe (layer4 at 3e-4, a new head at 2e-3, AdamW, 8 epochs, label smoothing 0.1) reached accuracy 0.819 /
# macro-F1 0.764 on the held-out set; the body's lr is the head's x 0.15.
RECIPES["cached"] = replace(
    RECIPES["default"], name="cached", lr=2e-3, backbone_lr_factor=0.15, epochs=8, warmup_epochs=0.5
)


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise SettingError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}") from None
