"""Plans a serving system loads: SGLang's ``--init-expert-location`` file.

SGLang (``sglang/srt/eplb/expert_location.py``) reads a JSON object whose only key is
``physical_to_logical_map``: ``[layers][num_physical_experts]`` logical expert ids, the same
width in every layer, ``layers`` = the model's ``num_hidden_layers`` (dense layers included;
DeepSeek-V3: 61, of which the first 3 are dense), ``num_physical_experts`` = routed experts +
``--ep-num-redundant-experts``, physical expert ``p`` living on EP rank ``p // (num_physical /
ep_size)``. Every logical expert needs at least one physical slot in every layer. SGLang's
dispatcher picks an expert's replica uniformly (``--ep-dispatch-algorithm dynamic``) or by a
per-rank map that spreads ranks evenly over replicas (``static``): the ``even`` rule. So a
plan it can run has no empty slot, the same slots on every device in every layer, and no
uneven ``slot_share``.

What :func:`to_sglang` refuses, with the nearest plan it can offer:

* empty slots (``--policy budget``: per-layer slot counts) -> re-plan with ``--policy even``;
* uneven ``slot_share`` (``--policy balanced``) -> the same slots with the even split
  (``--even-split``: what SGLang would do with these slots anyway, said out loud);
* a plan whose layers or experts do not match the model (``--model-config``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xpod.hal.errors import XpodError

from .io import read_json
from .placement import Placement
from .score import even_shares


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The MoE layout of a model, as SGLang sees it."""

    num_layers: int  # num_hidden_layers: rows of physical_to_logical_map
    num_experts: int  # routed experts per MoE layer
    first_moe_layer: int  # leading dense layers (DeepSeek-V3: first_k_dense_replace = 3)

    @classmethod
    def from_hf_config(cls, path: str) -> "ModelShape":
        """From a Hugging Face ``config.json`` (``num_hidden_layers``, ``n_routed_experts`` or
        ``num_experts``, ``first_k_dense_replace``)."""
        doc = read_json(path)
        if not isinstance(doc, dict):
            raise XpodError(f"{path}: expected a model config.json object")
        doc = doc.get("text_config", doc) if isinstance(doc.get("text_config"), dict) else doc
        experts = doc.get("n_routed_experts", doc.get("num_experts"))
        layers = doc.get("num_hidden_layers")
        first = doc.get("first_k_dense_replace", 0)
        for name, value in (("num_hidden_layers", layers), ("n_routed_experts", experts)):
            if not isinstance(value, int) or value < 1:
                raise XpodError(f"{path}: field {name!r} must be a positive integer, got {value!r}")
        if not isinstance(first, int) or not 0 <= first < layers:
            raise XpodError(f"{path}: field 'first_k_dense_replace' must be in [0, {layers}), got {first!r}")
        return cls(num_layers=layers, num_experts=experts, first_moe_layer=first)


@dataclasses.dataclass(frozen=True)
class SglangExport:
    """What ``xpod moe export --format sglang`` writes and prints."""

    document: dict  # {"physical_to_logical_map": [[...]]}: the whole file
    ep_size: int  # --ep-size
    redundant_experts: int  # --ep-num-redundant-experts
    dense_rows: int  # leading rows written as the trivial map (dense layers)

    def flags(self, path: str) -> str:
        return (
            f"--ep-size {self.ep_size} --ep-num-redundant-experts {self.redundant_experts} "
            f"--init-expert-location {path} --ep-dispatch-algorithm dynamic"
        )


def _replan_hint(placement: Placement, plan_path: str) -> str:
    sh = placement.shape
    return (
        f"xpod moe place ... --policy even --devices {sh.num_devices} --nodes {sh.num_nodes} "
        f"--slots {sh.num_devices * sh.slots_per_device}"
    )


def to_sglang(
    placement: Placement,
    plan_path: str,
    num_experts: int,
    model: ModelShape | None = None,
    even_split: bool = False,
) -> SglangExport:
    """The ``--init-expert-location`` document for ``placement`` (module docstring), or an
    ``XpodError`` naming ``plan_path``, what SGLang cannot run and the nearest plan it can."""
    phy2log = np.asarray(placement.phy2log)
    layers, slots = phy2log.shape
    devices = placement.shape.num_devices
    if (phy2log < 0).any():
        per_layer = sorted({int(v) for v in (phy2log >= 0).sum(axis=1)})
        raise XpodError(
            f"{plan_path}: slots per layer vary ({per_layer[0]}-{per_layer[-1]}; policy {placement.policy.value}), "
            f"SGLang needs the same physical experts in every layer; nearest it can run: {_replan_hint(placement, plan_path)}"
        )
    per_device = np.bincount(placement.slot_device, minlength=devices)
    if slots % devices or not (placement.slot_device == np.repeat(np.arange(devices), slots // devices)).all():
        raise XpodError(
            f"{plan_path}: devices hold {sorted(set(per_device.tolist()))} slots, not contiguous equal blocks; "
            f"SGLang puts physical expert p on rank p // (slots / ep size); nearest: {_replan_hint(placement, plan_path)}"
        )
    if placement.slot_share is not None and not even_split:
        even = even_shares(phy2log, num_experts)
        if not np.allclose(placement.slot_share, even, atol=1e-5):
            raise XpodError(
                f"{plan_path}: uneven slot_share (policy {placement.policy.value}); SGLang splits an expert's tokens "
                f"evenly over its replicas; nearest it can run: the same slots with the even split (--even-split), "
                f"or {_replan_hint(placement, plan_path)}"
            )
    missing = [layer for layer in range(layers) if len(np.unique(phy2log[layer])) < num_experts]
    if missing:
        raise XpodError(
            f"{plan_path}: layer {missing[0]} has no slot for some of its {num_experts} experts "
            f"({len(missing)} layers); SGLang needs every expert in every layer"
        )
    dense = 0
    if model is not None:
        if model.num_experts != num_experts:
            raise XpodError(
                f"{plan_path}: the plan has {num_experts} experts per layer, the model {model.num_experts}; "
                "plan from loads of this model"
            )
        moe_layers = model.num_layers - model.first_moe_layer
        if layers == model.num_layers:
            dense = 0
        elif layers == moe_layers:
            dense = model.first_moe_layer
        else:
            raise XpodError(
                f"{plan_path}: {layers} layers, but the model has {model.num_layers} ({model.first_moe_layer} dense + "
                f"{moe_layers} MoE); plan from loads of this model"
            )
    # dense layers route nothing: SGLang's own default for them is the trivial map p % experts
    trivial = np.arange(slots) % num_experts
    rows = [trivial.tolist()] * dense + phy2log.astype(int).tolist()
    return SglangExport(
        document={"physical_to_logical_map": rows},
        ep_size=devices,
        redundant_experts=slots - num_experts,
        dense_rows=dense,
    )
