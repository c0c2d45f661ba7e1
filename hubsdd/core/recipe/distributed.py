"""The recipe's ``finetune.distributed`` settings: how ``accelerate launch`` spreads the finetune
stage over GPUs and machines (:mod:`hubsdd.pipeline.launch_commands` builds the command). Import it from
:mod:`hubsdd.core.recipe`."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .base import Section
from .file import shown

# A host name or an IPv4/IPv6 address: what `accelerate launch --main_process_ip` is given.
HOST_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)*$"
                     r"|^[0-9A-Fa-f:.]{2,45}$")


class DistributedSettings(Section):
    """Named as ``accelerate launch``'s own options. One process per GPU."""

    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp", description="ddp: a whole copy of the model per GPU (LoRA on an 8B model fits an 80 GB GPU); fsdp: "
        "parameters, gradients and optimizer states sharded over the GPUs (FULL_SHARD, wrapped per decoder "
        "layer), gathered whole onto the main process to merge and save.")
    num_processes: int = Field(1, ge=1, le=4096, description="Processes (GPUs) in all, over every machine, as "
                               "accelerate's --num_processes.")
    num_machines: int = Field(1, ge=1, le=512, description="Machines (nodes); each runs the same command with its "
                              "own --machine_rank (`hubsdd launch-command` prints one per machine).")
    main_process_ip: str | None = Field(None, description="Address of the machine of rank 0 (required with several "
                                        "machines).")
    main_process_port: int = Field(29500, ge=1, le=65535)
    fsdp_offload_params: bool = Field(False, description="fsdp: keep parameters and optimizer states in CPU memory "
                                      "(slower; for full fine-tuning that does not fit the GPUs otherwise).")

    @field_validator("main_process_ip")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and not HOST_RE.match(v):
            raise ValueError(f"{shown(v)} is not a host name or an IP address")
        return v

    @model_validator(mode="after")
    def _topology(self) -> "DistributedSettings":
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes ({self.num_processes}) counts the processes of every machine: it must be "
                             f"a multiple of num_machines ({self.num_machines}), e.g. {8 * self.num_machines} for "
                             f"{self.num_machines} machines of 8 GPUs")
        if self.num_machines > 1 and self.main_process_ip is None:
            raise ValueError(f"{self.num_machines} machines need main_process_ip: the address of the machine of rank 0")
        return self

    @property
    def per_machine(self) -> int:
        return self.num_processes // self.num_machines
