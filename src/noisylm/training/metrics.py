"""Where training numbers go: ``metrics.jsonl`` (the contract), TensorBoard, optionally Weights & Biases."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from noisylm.artifacts import atomic_write_text, read_jsonl
from noisylm.errors import NoisyLMError

# Dense (no sparsity) bf16 tensor-core peak FLOP/s per GPU from NVIDIA's datasheets, for MFU; fp16 for
# GPUs without bf16 (V100, T4). More specific names first: "H100 PCIe" before "H100". A name matches
# as a whole word of the device name ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla T4"),
# so "A10" does not match "A100" or "A10G". Unknown GPUs and CPUs: MFU is null.
PEAK_FLOPS = {
    "B200": 2250e12,
    "H200 NVL": 835e12,
    "GH200": 989e12,
    "H200": 989e12,  # SXM
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,  # SXM and PCIe
    "A40": 150e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX A6000": 155e12,
    "RTX 4090": 165e12,  # fp32 accumulation
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16 (SXM2)
    "T4": 65e12,  # fp16
}


def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak FLOP/s of the GPU called ``name`` (as CUDA reports it), or None."""
    for key, flops in PEAK_FLOPS.items():
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", name):
            return flops
    return None


def peak_flops(device: torch.device) -> float | None:
    """The device's peak FLOP/s when known (CUDA GPUs in `PEAK_FLOPS`), else None."""
    if device.type != "cuda":
        return None
    return gpu_peak_flops(torch.cuda.get_device_name(device))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a metrics.jsonl (a torn last line from a killed run is dropped)."""
    return read_jsonl(path)


class MetricsLogger:
    """Appends lines to ``run_dir/metrics.jsonl`` and mirrors scalars to TensorBoard / wandb (rank 0)."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: dict[str, Any] | None = None,
        keep_until_iter: int | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        if keep_until_iter is None:
            atomic_write_text(self.path, "")
        else:  # resuming: drop what was logged after the checkpoint (it will be logged again)
            kept = [m for m in read_metrics(self.path) if m.get("iter", 0) <= keep_until_iter]
            atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in kept))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(
                log_dir=str(run_dir / "tb"),
                purge_step=None if keep_until_iter is None else keep_until_iter + 1,
            )
        self.wandb = None
        if wandb_project:
            try:
                import wandb
            except ModuleNotFoundError:
                raise NoisyLMError(
                    "wandb_project is set but wandb is not installed; pip install wandb"
                ) from None
            self.wandb = wandb.init(project=wandb_project, name=wandb_run_name, config=config, resume="allow")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        step = record["iter"]
        scalars = {k: v for k, v in record.items() if k not in ("iter", "eval") and _is_number(v)}
        scalars.update({f"eval/{k}": v for k, v in (record.get("eval") or {}).items() if _is_number(v)})
        if self.tb is not None:
            for key, value in scalars.items():
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(scalars, step=step)

    def close(self) -> None:
        self._file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
