"""Which GPU each CUDA device is (autotune.hardware.devices), and what follows from it: the
default memory limit, the per-rank micro-batch and the worker's trial device.

On the CPU the CUDA side is given as the data torch would report (UUIDs, memory, SMs per
CUDA index) for a CUDA_VISIBLE_DEVICES subset, a node of mixed GPUs or MIG slices; the
tests at the end run against torch's own device and skip without CUDA.
"""

from __future__ import annotations

import pytest
import torch

from autotune.config import TrainConfig
from autotune.workflow.final import per_rank_config
from autotune.hardware.devices import bare_uuid, cuda_devices, cuda_gpus, visible_devices
from autotune.search.limits import default_limit_bytes

GiB = 2**30
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _uuid(i: int) -> str:
    return f"{i}{i}{i}{i}{i}{i}{i}{i}-aaaa-bbbb-cccc-{i:012d}"


def _nvml_gpu(i: int, name: str, gib: int) -> dict:
    """A GPU as the profile lists it: NVML's index, name, "GPU-" UUID and memory."""
    return {"index": i, "name": name, "uuid": f"GPU-{_uuid(i)}", "memory_total_bytes": gib * GiB, "sm_count": "N/A",
            "pcie_generation": 5}


def _device(i: int, name: str, gib: float, sms: int) -> dict:
    """A CUDA device as torch reports it (``device_facts``): the bare UUID, its own memory."""
    return {"name": name, "uuid": _uuid(i), "memory_total_bytes": int(gib * GiB), "sm_count": sms}


# NVML, in PCI order: two A100s, then two H100s.
NODE = [_nvml_gpu(0, "A100", 40), _nvml_gpu(1, "A100", 40), _nvml_gpu(2, "H100", 80), _nvml_gpu(3, "H100", 80)]


@pytest.mark.parametrize("value, entries", [
    (None, None),
    ("", []),
    ("2,3", ["2", "3"]),
    ("3, 1", ["3", "1"]),
    ("1,-1,2", ["1"]),  # -1 ends the list
    ("1,x,2", ["1"]),
    ("1,1", []),  # a repeated entry: no device at all
    ("GPU-a,GPU-b,3", ["GPU-a", "GPU-b"]),  # a UUID list ends at an entry of another kind
    ("MIG-a,MIG-b", ["MIG-a", "MIG-b"]),
])
def test_visible_devices_reads_the_list_as_cuda_does(value, entries):
    assert visible_devices(value) == entries


def test_uuids_match_without_their_prefix_or_case():
    assert bare_uuid("GPU-ABCD-12") == bare_uuid("abcd-12") == "abcd-12"
    assert bare_uuid("MIG-ab-1") == "ab-1"
    assert bare_uuid("N/A") == bare_uuid(None) == ""


def test_a_subset_in_cuda_visible_devices_maps_each_cuda_index_to_its_own_gpu():
    # CUDA_VISIBLE_DEVICES=3,1 (or GPU-<3>,GPU-<1>): CUDA device 0 is NVML's GPU 3.
    devices = [_device(3, "H100", 79.2, 132), _device(1, "A100", 39.4, 108)]
    found = cuda_gpus(NODE, devices)
    assert [g["index"] for g in found] == [3, 1]
    assert [g["uuid"] for g in found] == [NODE[3]["uuid"], NODE[1]["uuid"]]
    # torch's figures for the device, NVML's for the rest.
    assert [g["memory_total_bytes"] for g in found] == [int(79.2 * GiB), int(39.4 * GiB)]
    assert [g["sm_count"] for g in found] == [132, 108]
    assert found[0]["pcie_generation"] == 5


def test_on_a_mixed_node_cuda_orders_the_fastest_first():
    devices = [_device(2, "H100", 79.2, 132), _device(3, "H100", 79.2, 132), _device(0, "A100", 39.4, 108)]
    assert [g["index"] for g in cuda_gpus(NODE, devices)] == [2, 3, 0]


def test_a_mig_slice_has_its_own_memory_and_no_nvml_entry():
    # A MIG slice's UUID is none of the GPUs' UUIDs: it keeps torch's figures only.
    mig = {"name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "uuid": _uuid(9), "memory_total_bytes": 10 * GiB,
           "sm_count": 16}
    found = cuda_gpus(NODE, [mig])
    assert found == [mig]
    assert default_limit_bytes("cuda", NODE, {}, devices=[mig]) == 10 * GiB  # not the first A100's 40 GiB


def test_the_default_memory_limit_is_cuda_device_0s_not_nvml_gpu_0s():
    devices = [_device(3, "H100", 79.2, 132)]  # CUDA_VISIBLE_DEVICES=3
    assert default_limit_bytes("cuda", NODE, {}, devices=devices) == int(79.2 * GiB)
    assert default_limit_bytes("cuda", NODE, {}, devices=devices + [_device(0, "A100", 39.4, 108)]) == int(79.2 * GiB)
    # Where torch sees no device: the profile's first GPU.
    assert default_limit_bytes("cuda", NODE, {}, devices=[]) == 40 * GiB


def test_per_rank_micro_batch_follows_the_ranks_devices_not_nvmls_first_gpus():
    cfg = TrainConfig(micro_batch_size=64, accumulation_steps=1, base_lr=0.001, base_batch_size=32, lr_rule="linear")
    logs: list[str] = []
    # NVML's first two are A100s, but CUDA puts the H100s first: ranks 0 and 1 both get an
    # H100, so the micro-batch tuned on device 0 stays.
    fastest_first = [_device(2, "H100", 79.2, 132), _device(3, "H100", 79.2, 132), _device(0, "A100", 39.4, 108)]
    assert per_rank_config(cfg, 2, NODE, logs.append, devices=fastest_first).micro_batch_size == 64
    # Three ranks: rank 2 is on an A100 with half the memory of device 0.
    got = per_rank_config(cfg, 3, NODE, logs.append, devices=fastest_first)
    assert got.micro_batch_size == int(64 * 39.4 / 79.2)
    assert logs == [f"autotune: the smallest of the 3 GPUs has 50% of the first one's memory: micro-batch 64 -> "
                    f"{got.micro_batch_size} per rank"]
    # Without CUDA devices (ranks on the CPU), the profile's GPUs do not matter.
    assert per_rank_config(cfg, 2, [NODE[2], NODE[0]], logs.append, devices=[]).micro_batch_size == 64


@NEEDS_CUDA
def test_cuda_devices_are_torchs_own():
    props = torch.cuda.get_device_properties(0)
    first = cuda_devices()[0]
    assert first["name"] == props.name and first["memory_total_bytes"] == props.total_memory
    assert first["sm_count"] == props.multi_processor_count
    assert len(cuda_devices()) == torch.cuda.device_count()


@NEEDS_CUDA
def test_a_profile_gpu_unlike_the_device_yields_to_torchs_description():
    from autotune.hardware import SCHEMA_VERSION, HardwareProfile
    from autotune.workflow.parallel import trial_device

    props = torch.cuda.get_device_properties(0)
    other = {"name": "Some Other GPU", "uuid": f"GPU-{props.uuid}", "memory_total_bytes": 1 * GiB, "sm_count": 1}
    profile = HardwareProfile(schema_version=SCHEMA_VERSION, created="", device="cuda", gpus=[other], amp={},
                              software={}, host={}, nvml={"driver_version": "1.2"})
    assert trial_device(profile) == (f"GPU {props.name}, {round(props.total_memory / GiB)} GiB, "
                                     f"{props.multi_processor_count} SMs, driver 1")
    assert default_limit_bytes("cuda", [other], {}) == props.total_memory
