"""Reading load statistics and placement files, with one-line errors naming the file and field."""

from __future__ import annotations

import json
import zipfile
from typing import Any

import numpy as np

from xpod.hal.errors import XpodError

from .placement import Placement, PodShape, Policy


def load_workload(path: str, workload: str) -> np.ndarray:
    """``[layers, experts]`` loads for ``workload`` (a key of the ``.npz``), or a history
    ``[windows, layers, experts]`` when ``workload`` is a comma-separated list (oldest first)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise XpodError(f"{path}: no such file; pass --loads with an .npz of [layers, experts] arrays") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise XpodError(f"{path}: cannot read: {' '.join(str(err).split())[:120]}") from None
    except ValueError:
        raise XpodError(
            f"{path}: not an .npz archive of numeric arrays; pass np.savez output of [layers, experts] loads"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise XpodError(f"{path}: expected an .npz archive of named arrays, got a single array")
    names = [n.strip() for n in workload.split(",") if n.strip()]
    if not names:
        raise XpodError(f"--workload: empty; choose from {', '.join(npz.files)}")
    arrays = []
    for name in names:
        if name not in npz.files:
            raise XpodError(f"{path}: no workload {name!r}; choose from {', '.join(npz.files)}")
        arr = npz[name]
        if arr.ndim != 2:
            raise XpodError(f"{path}: workload {name!r} has shape {arr.shape}; expected [layers, experts]")
        arrays.append(arr)
    if len({a.shape for a in arrays}) > 1:
        raise XpodError(f"{path}: workloads {names} have different shapes {[a.shape for a in arrays]}")
    return arrays[0] if len(arrays) == 1 else np.stack(arrays)


def _int_matrix(doc: dict, key: str, path: str, ndim: int) -> np.ndarray:
    if key not in doc:
        raise XpodError(f"{path}: missing field {key!r}; is this a file written by 'xpod moe place'?")
    try:
        arr = np.asarray(doc[key])
    except ValueError:
        raise XpodError(f"{path}: field {key!r} is ragged; every row must have the same length") from None
    if arr.ndim != ndim or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise XpodError(
            f"{path}: field {key!r} must be a non-empty {ndim}-d array of integers, got shape {arr.shape} ({arr.dtype})"
        )
    return arr.astype(np.int64)


def read_json(path: str):
    """The JSON document in ``path``; a missing file or bad JSON is one line naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise XpodError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise XpodError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None


def load_placement(path: str, loads_shape: tuple[int, int] | None = None) -> Placement:
    """A placement JSON written by ``xpod moe place`` (see ARCHITECTURE.md for the contract).
    With ``loads_shape`` (layers, experts), a plan for another model is refused in one line."""
    return placement_from_json(read_json(path), path, loads_shape)


def placement_from_json(doc: Any, path: str, loads_shape: tuple[int, int] | None = None) -> Placement:
    """``load_placement`` of a document already read; ``path`` names it in errors."""
    if not isinstance(doc, dict):
        raise XpodError(f"{path}: expected a JSON object with phy2log and slot_device")
    phy2log = _int_matrix(doc, "phy2log", path, 2)
    slot_device = _int_matrix(doc, "slot_device", path, 1)
    if phy2log.shape[1] != len(slot_device):
        raise XpodError(f"{path}: phy2log rows have {phy2log.shape[1]} slots but slot_device has {len(slot_device)}")
    if slot_device.min() < 0 or phy2log.min() < -1:
        raise XpodError(f"{path}: negative device or expert id (only -1 = empty slot is allowed in phy2log)")
    num_devices = int(doc.get("num_devices", int(slot_device.max()) + 1))
    if slot_device.max() >= num_devices:
        raise XpodError(f"{path}: slot_device names device {slot_device.max()} but num_devices is {num_devices}")
    share = None
    if doc.get("slot_share") is not None:
        try:
            share = np.asarray(doc["slot_share"], dtype=np.float64)
        except (TypeError, ValueError):
            raise XpodError(f"{path}: field 'slot_share' must be a [layers][slots] array of numbers") from None
        if share.shape != phy2log.shape:
            raise XpodError(f"{path}: slot_share has shape {share.shape}, phy2log {phy2log.shape}; they must match")
        if not np.all(np.isfinite(share)) or share.min() < 0:
            raise XpodError(f"{path}: slot_share must hold finite fractions >= 0")
    try:
        shape = PodShape(
            num_devices=num_devices,
            num_nodes=int(doc.get("num_nodes", 1)),
            slots_per_device=int(doc.get("slots_per_device", max(1, len(slot_device) // num_devices))),
            num_super_nodes=int(doc.get("num_super_nodes", 1)),
        )
        policy = Policy(doc.get("policy", "balanced"))
    except (TypeError, ValueError) as err:
        raise XpodError(f"{path}: bad pod shape or policy field: {err}") from None
    experts = doc.get("num_experts", int(phy2log.max()) + 1)
    if not isinstance(experts, int) or phy2log.max() >= experts:
        raise XpodError(f"{path}: phy2log names expert {phy2log.max()} but num_experts is {experts!r}")
    if loads_shape is not None and (phy2log.shape[0], experts) != tuple(loads_shape):
        raise XpodError(
            f"{path}: a plan for {phy2log.shape[0]} layers x {experts} experts, but the loads have "
            f"{loads_shape[0]} layers x {loads_shape[1]} experts"
        )
    return Placement(
        phy2log=phy2log,
        slot_device=slot_device,
        slot_share=share,
        shape=shape,
        num_groups=int(doc.get("num_groups", 1)),
        policy=policy,
        seconds=float(doc.get("seconds", 0.0)),
        weight_moves=doc.get("weight_moves"),
    )


# --------------------------------------------------------------------------------------------
# SGLang's expert-distribution recorder dumps

# The dumps of ``--expert-distribution-recorder-mode stat`` (sglang/srt/eplb/expert_distribution.py,
# ``_StatAccumulator.dump``, written by torch.save as ``expert_distribution_recorder_<time>.pt``)
# and the JSON files ``--init-expert-location`` reads: the key sets of the versions known here.
# ``logical_count`` is [steps, layers, experts] (the recorder's buffered forward passes) or, in
# the JSON files SGLang's team published (sgl-project/sglang#6017), [layers, experts]; layers are
# all the model's layers (DeepSeek-V3: 61, the first 3 dense and all zero).
SGLANG_DUMP_KEYS = (
    frozenset({"logical_count"}),
    frozenset({"rank", "logical_count"}),
    frozenset({"rank", "logical_count", "average_utilization_rate_over_window"}),
)


def _sglang_doc(path: str) -> dict:
    if path.endswith(".json"):
        return read_json(path)
    try:
        import torch
    except ImportError:
        raise XpodError(f"{path}: reading an SGLang .pt dump needs torch; pip install torch") from None
    try:
        # weights_only: a dump holds tensors, ints, floats and None; nothing else is unpickled
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise XpodError(f"{path}: no such file") from None
    except Exception as err:  # torch raises several kinds for a file that is not its format
        raise XpodError(f"{path}: not a torch.save file SGLang wrote: {' '.join(str(err).split())[:120]}") from None


def load_sglang_dump(path: str) -> np.ndarray:
    """``[layers, experts]`` token counts from an SGLang expert-distribution dump: a ``.pt`` of
    ``--expert-distribution-recorder-mode stat`` (forward passes summed) or a ``.json`` with
    ``logical_count``. Any other shape or key set is refused with one line naming the file."""
    doc = _sglang_doc(path)
    if not isinstance(doc, dict):
        raise XpodError(f"{path}: an SGLang dump is a dict with 'logical_count', got {type(doc).__name__}")
    keys = frozenset(doc)
    if "records" in keys:
        raise XpodError(
            f"{path}: a per-pass/per-token SGLang dump (keys {sorted(keys)}); record with "
            "--expert-distribution-recorder-mode stat"
        )
    if keys not in SGLANG_DUMP_KEYS:
        raise XpodError(
            f"{path}: unknown SGLang dump version: keys {sorted(keys)}; known: "
            + " | ".join(str(sorted(k)) for k in SGLANG_DUMP_KEYS)
        )
    raw = doc["logical_count"]
    try:
        arr = np.asarray(raw.numpy() if hasattr(raw, "numpy") else raw)
    except ValueError:
        raise XpodError(f"{path}: 'logical_count' is ragged; every layer must list the same experts") from None
    if arr.ndim not in (2, 3) or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise XpodError(
            f"{path}: 'logical_count' must be integer counts [layers, experts] or [steps, layers, experts], "
            f"got shape {arr.shape} ({arr.dtype})"
        )
    if arr.min() < 0:
        raise XpodError(f"{path}: 'logical_count' holds negative counts")
    return (arr.sum(axis=0) if arr.ndim == 3 else arr).astype(np.float64)


def is_sglang_dump(path: str) -> bool:
    return path.endswith((".pt", ".json"))


def read_loads(paths: list[str], workload: str | None) -> np.ndarray:
    """The loads ``xpod moe place --loads`` takes: one ``.npz`` with ``workload`` (a name, or a
    comma-separated history), or SGLang dumps (one window each, oldest first). Returns
    ``[layers, experts]`` or ``[windows, layers, experts]``."""
    if len(paths) == 1 and not is_sglang_dump(paths[0]):
        if not workload:
            raise XpodError(f"{paths[0]}: an .npz needs --workload NAME (one of its arrays)")
        return load_workload(paths[0], workload)
    if not all(is_sglang_dump(p) for p in paths):
        raise XpodError(f"--loads: several files must all be SGLang dumps (.pt or .json), got {', '.join(paths)}")
    if workload:
        raise XpodError("--workload names an array of an .npz; SGLang dumps have none, drop it")
    windows = [load_sglang_dump(p) for p in paths]
    for p, w in zip(paths[1:], windows[1:]):
        if w.shape != windows[0].shape:
            raise XpodError(
                f"{p}: {w.shape[0]} layers x {w.shape[1]} experts, but {paths[0]} has "
                f"{windows[0].shape[0]} x {windows[0].shape[1]}; every window must come from the same model"
            )
    return windows[0] if len(windows) == 1 else np.stack(windows)
