"""The registry of methods and pre-training variants: the one place that names them.

A *variant* is a pre-trained world model, defined by the `model` values it is pre-trained with (PreLAR
Eq. 9, its two ablations, APV's action-free model). `prelar pretrain --variant NAME` applies them, the
checkpoint records NAME, and the evaluation stages name the checkpoint by it. A *method* is how
`prelar finetune` uses a variant's checkpoint, or none (how each builds its model: `prelar.agent.model`).

Read by config validation (`finetune.method`, `finetune.matrix.methods`, `pretrain.variants`),
pre-training, the fine-tuning model, the evaluation stages and the report (`label`). Plain data:
importing it costs nothing. To add a method or variant, add one line below.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Variant:
    """A pre-trained world model: the `model` values that define it (any other `model` key may vary)."""

    name: str
    model: Mapping[str, Any]

    def mismatch(self, model_config: Mapping[str, Any]) -> dict[str, Any]:
        """The defining values that `model_config` (a `config.Model` as a dict) has otherwise; {} if none. A
        key it lacks (a checkpoint's, written before the key existed) counts with `config.Model`'s default."""
        from prelar.config import Model

        full = {**Model().model_dump(), **model_config}
        return {k: full.get(k) for k, v in self.model.items() if full.get(k) != v}


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: the variant whose checkpoint it loads, and how it feeds actions."""

    name: str
    label: str  # as the papers and the report name it
    variant: str | None  # None: random init (no checkpoint)
    stacked: bool = False  # APV's stacked action-conditional model on top of the pre-trained one
    action_encoder: bool = False  # real action → latent action (PreLAR); else real actions directly
    bonus: bool = False  # video-based intrinsic bonus (PreLAR Eq. 12, APV Eq. 5)

    @property
    def pretrained(self) -> bool:
        return self.variant is not None

    @property
    def expects(self) -> Mapping[str, Any]:
        """The model values its checkpoint must have ({} for a method without one)."""
        return VARIANTS[self.variant].model if self.variant else {}

    def mismatch(self, model_config: Mapping[str, Any]) -> dict[str, Any]:
        """The expected values that a checkpoint's `model_config` has otherwise; {} if it fits."""
        return VARIANTS[self.variant].mismatch(model_config) if self.variant else {}


def _variant(name: str, **model: Any) -> Variant:
    return Variant(name, MappingProxyType(model))


_LATENT = {"action_free": False, "true_actions": False}  # the variants with latent actions


VARIANTS: Mapping[str, Variant] = MappingProxyType(
    {
        v.name: v
        for v in (
            _variant("prelar", **_LATENT, use_consistency=True, use_action_kl=True),
            _variant("prelar_no_cl", **_LATENT, use_consistency=False, use_action_kl=True),
            _variant("prelar_no_cl_al", **_LATENT, use_consistency=False, use_action_kl=False),
            _variant("apv", action_free=True),
            # not in the papers: a yardstick from labels, the clip's true action in the latent action's place
            _variant("true_action", action_free=False, true_actions=True, use_consistency=False,
                     use_action_kl=False),
        )
    }
)

METHODS: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            Method("prelar", "PreLAR", "prelar", action_encoder=True, bonus=True),
            Method("prelar_no_cl", "PreLAR w/o CL", "prelar_no_cl", action_encoder=True, bonus=True),
            Method(
                "prelar_no_cl_al", "PreLAR w/o CL & AL", "prelar_no_cl_al", action_encoder=True, bonus=True
            ),
            Method("apv", "APV", "apv", stacked=True, bonus=True),
            Method("naive_ft", "Naive fine-tuning", "apv"),
            Method("true_action", "Pre-trained with true actions", "true_action"),
            Method("dreamerv2", "DreamerV2", None),
        )
    }
)
SCRATCH = METHODS["dreamerv2"]  # the method without pre-training


def method(name: str) -> Method:
    """The method called `name`; ValueError naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of {list(METHODS)}")
    return METHODS[name]


def variant(name: str) -> Variant:
    """The pre-training variant called `name`; ValueError naming the choices otherwise."""
    if name not in VARIANTS:
        raise ValueError(
            f"unknown pre-training variant '{name}'; choose one of {list(VARIANTS)} "
            "(or register one in prelar/methods.py)"
        )
    return VARIANTS[name]


def finetuned_by(variant_name: str) -> Method:
    """The method that fine-tunes `variant_name`'s checkpoint in its own way (the first that loads it)."""
    for m in METHODS.values():
        if m.variant == variant_name:
            return m
    raise ValueError(f"no method in prelar/methods.py fine-tunes the pre-training variant '{variant_name}'")


def fitting(model_config: Mapping[str, Any]) -> list[str]:
    """The methods whose expected checkpoint a model with `model_config` is (for error messages)."""
    return [m.name for m in METHODS.values() if m.pretrained and not m.mismatch(model_config)]


def label(name: str) -> str:
    """How the report shows a method or variant (its registered label; other names as they are)."""
    return METHODS[name].label if name in METHODS else name
