"""Which GPU each CUDA device of this process is.

NVML numbers every GPU of the machine in PCI bus order. CUDA numbers only the devices
``CUDA_VISIBLE_DEVICES`` names, in the order it names them (indices, ``GPU-`` UUIDs or
``MIG-`` ids), and without it orders them fastest first; a MIG slice is a CUDA device
of its own, with its own UUID, its share of the memory and its share of the SMs. So
NVML's GPU i and CUDA's device i are the same only by chance: here GPUs are matched by
UUID (NVML writes ``GPU-<uuid>``, torch the bare uuid), and what a process trains on is
described by torch's own figures for its device.

torch is imported only inside ``cuda_devices``; the rest is plain data, so it is
tested on a machine without a GPU.
"""

from __future__ import annotations

import re
from typing import Any

_INDEX = re.compile(r"\d+")


def visible_devices(value: str | None) -> list[str] | None:
    """The entries of a ``CUDA_VISIBLE_DEVICES`` value as CUDA reads them; None when unset.

    A list of ``GPU-`` UUIDs or ``MIG-`` ids ends at the first entry without that prefix;
    a list of indices at the first entry that does not start with a number (``-1`` ends
    it too). A repeated entry makes CUDA see no device at all (an empty list), as does
    an empty value.
    """
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(",")]
    found: list[str] = []
    prefix = next((p for p in ("GPU-", "MIG-") if entries[0].startswith(p)), None)
    for entry in entries:
        if prefix is not None:
            if not entry.startswith(prefix):
                break
            name = entry
        else:
            match = _INDEX.match(entry)
            if match is None:
                break
            name = str(int(match.group()))
        if name in found:
            return []
        found.append(name)
    return found


def bare_uuid(uuid: Any) -> str:
    """A GPU or MIG UUID without its ``GPU-`` / ``MIG-`` prefix, in lower case ("" if none)."""
    text = str(uuid or "").strip().lower()
    for prefix in ("gpu-", "mig-"):
        text = text.removeprefix(prefix)
    return "" if text == "n/a" else text


def device_facts(props: Any) -> dict[str, Any]:
    """What torch says of one CUDA device (``torch.cuda.get_device_properties``), under
    the profile's GPU keys: its name, UUID, memory in bytes and SM count."""
    return {
        "name": str(props.name),
        "uuid": bare_uuid(getattr(props, "uuid", "")),
        "memory_total_bytes": int(props.total_memory),
        "sm_count": int(props.multi_processor_count),
    }


def cuda_devices() -> list[dict[str, Any]]:
    """``device_facts`` of each CUDA device this process sees, by CUDA index; empty
    without CUDA. Initialises CUDA in this process."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [device_facts(torch.cuda.get_device_properties(i)) for i in range(torch.cuda.device_count())]


def cuda_gpus(gpus: list[dict[str, Any]], devices: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per CUDA index of this process, its GPU: the profile's NVML entry (from ``gpus``)
    with the same UUID, with torch's name, memory and SM count for the device put over
    NVML's. A device no entry matches (a MIG slice, a GPU NVML could not read) has
    torch's figures only. ``devices`` defaults to ``cuda_devices()``; empty without CUDA.
    """
    devices = cuda_devices() if devices is None else devices
    by_uuid = {bare_uuid(g.get("uuid")): g for g in gpus if bare_uuid(g.get("uuid"))}
    matched = []
    for device in devices:
        gpu = dict(by_uuid.get(bare_uuid(device.get("uuid")), {}))
        gpu.update({key: value for key, value in device.items() if key != "uuid" and value is not None})
        gpu.setdefault("uuid", device.get("uuid", ""))
        matched.append(gpu)
    return matched
