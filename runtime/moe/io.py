"""Reading load statistics and placement files, with one-line errors naming the file and field."""

from __future__ import annotations

import json
import zipfile

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


def load_placement(path: str) -> Placement:
    """A placement JSON written by ``xpod moe place`` (see ARCHITECTURE.md for the contract)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise XpodError(f"{path}: no such file") from None
    except json.JSONDecodeError as err:
        raise XpodError(f"{path}:{err.lineno}:{err.colno}: not valid JSON: {err.msg}") from None
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
