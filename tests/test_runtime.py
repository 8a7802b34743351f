"""runtime: what `dtype = "auto"` picks from a CPU's feature flags, the dtype names, and freed memory kept
for reuse during training."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from noisylm.errors import UsageError
from noisylm.runtime import _glibc, auto_cpu_dtype, choose_dtype, cpu_flags, keep_freed_memory, resolve_dtype

CPU = torch.device("cpu")
# Feature flags as /proc/cpuinfo spells them, of the CPU kinds that matter (abridged)
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8"}
COOPER_LAKE = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}  # and AMD Zen 4: AVX512-BF16, no AMX
SKYLAKE_X = {"avx2", "avx512f", "avx512bw", "avx512vl"}
HASWELL = {"avx", "avx2", "fma"}


@pytest.mark.parametrize(
    "flags, onednn, dtype, words",
    [
        (SAPPHIRE_RAPIDS, True, torch.bfloat16, "has AMX"),
        (SAPPHIRE_RAPIDS, False, torch.float32, "no oneDNN"),
        (COOPER_LAKE, True, torch.float32, "AVX512-BF16 but no AMX"),
        (SKYLAKE_X, True, torch.float32, "no AMX"),
        (HASWELL, True, torch.float32, "no AMX"),
        (set(), True, torch.float32, "no AMX"),
        ({"amx_tile"}, True, torch.float32, "no AMX"),  # tiles without their bf16 instructions
    ],
)
def test_auto_picks_bf16_only_with_amx(flags, onednn, dtype, words):
    got, reason = auto_cpu_dtype(flags, onednn)
    assert got == dtype
    assert reason.startswith(f"auto: {str(dtype).removeprefix('torch.')}") and words in reason


def test_this_cpus_flags_agree_with_pytorchs_cpuinfo():
    """The flags read from /proc/cpuinfo against PyTorch's own CPU feature probe (cpuinfo)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("AMX and AVX512-BF16 are x86 flags")
    flags = cpu_flags()
    assert ("amx_tile" in flags) == torch.cpu._is_amx_tile_supported()
    assert ("avx512_bf16" in flags) == torch.cpu._is_avx512_bf16_supported()


def test_auto_on_this_cpu_follows_its_flags():
    dtype, reason = choose_dtype("auto", CPU)
    assert (dtype, reason) == auto_cpu_dtype(cpu_flags(), torch.backends.mkldnn.is_available())
    assert resolve_dtype("auto", CPU) == dtype


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_a_named_dtype_is_taken_as_written(name, dtype):
    assert choose_dtype(name, CPU) == (dtype, "set in the config")


@pytest.mark.parametrize(
    "name, words", [("float16", "needs a GPU; on CPU use bfloat16 or float32"), ("int8", "not valid")]
)
def test_a_bad_dtype_is_one_clear_error(name, words):
    with pytest.raises(UsageError, match=words):
        resolve_dtype(name, CPU)


def _faults_of_a_fresh_40mb_tensor() -> int:
    """Minor page faults taken to allocate and fill a 40 MB tensor (then freed): above glibc's largest
    mmap threshold (32 MB), so by default its pages come fresh from the kernel each time."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(10 << 20)  # 40 MB of float32, written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(_glibc() is None, reason="keep_freed_memory applies to glibc's malloc only")
def test_keep_freed_memory_reuses_big_blocks_and_restores_glibc_defaults():
    """Outside the block glibc maps fresh pages for a 40 MB tensor each time (one fault per 4 KB page).
    Inside it, once the heap has grown to hold it (a few rounds: glibc's aligned allocations leave
    holes at first), a tensor freed and allocated again reuses its pages; nesting keeps the setting
    until the outermost block ends, which brings the defaults back."""
    pages = (40 << 20) // resource.getpagesize()
    assert _faults_of_a_fresh_40mb_tensor() > pages // 2
    with keep_freed_memory() as applied:
        assert applied
        for _ in range(16):  # the heap grows until the holes fit the block; then no more faults
            _faults_of_a_fresh_40mb_tensor()
        with keep_freed_memory():
            assert _faults_of_a_fresh_40mb_tensor() < pages // 20
        assert _faults_of_a_fresh_40mb_tensor() < pages // 20  # still kept: the outer block is open
    assert _faults_of_a_fresh_40mb_tensor() > pages // 2  # defaults back, memory released
