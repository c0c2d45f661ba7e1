"""The `accelerate launch` commands hubsdd builds for 1 node x 8 GPUs and 2 nodes x 8 GPUs (asserted,
not run: no GPU here), and the `finetune.distributed` settings they come from."""

from __future__ import annotations

import pytest

from hubsdd.core.errors import RecipeError
from hubsdd.pipeline.launch_commands import decoder_layer_class, launch_commands
from hubsdd.core.recipe import parse_recipe

FSDP = ("accelerate launch --use_fsdp --fsdp_version 2 --fsdp_reshard_after_forward true "
        "--fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer "
        "--fsdp_state_dict_type FULL_STATE_DICT --fsdp_offload_params false")


def _recipe(distributed: str):
    return parse_recipe(f"""\
name: r
base: {{model: meta-llama/Llama-3.1-8B-Instruct}}
prune: {{blocks: 6, calibration: {{path: cal.jsonl}}}}
distill: {{data: {{path: d.jsonl}}}}
finetune: {{distributed: {distributed}}}
""")


def test_one_node_of_eight_gpus() -> None:
    ddp = _recipe("{num_processes: 8}")
    assert launch_commands(ddp, "recipe.yaml") == [
        "accelerate launch --multi_gpu --num_processes 8 -m hubsdd.pipeline.launch recipe.yaml"]
    fsdp = _recipe("{strategy: fsdp, num_processes: 8}")
    assert launch_commands(fsdp, "recipe.yaml", layer_class="LlamaDecoderLayer") == [
        f"{FSDP} --num_processes 8 -m hubsdd.pipeline.launch recipe.yaml"]


def test_two_nodes_of_eight_gpus_one_command_per_machine() -> None:
    fsdp = _recipe("{strategy: fsdp, num_processes: 16, num_machines: 2, main_process_ip: 10.0.0.1}")
    assert launch_commands(fsdp, "recipe.yaml", layer_class="LlamaDecoderLayer") == [
        f"{FSDP} --num_processes 16 --num_machines 2 --machine_rank {rank} --main_process_ip 10.0.0.1 "
        "--main_process_port 29500 -m hubsdd.pipeline.launch recipe.yaml" for rank in (0, 1)]
    ddp = _recipe("{num_processes: 16, num_machines: 2, main_process_ip: head.cluster, main_process_port: 6000}")
    assert launch_commands(ddp, "my recipe.yaml")[1] == (
        "accelerate launch --multi_gpu --num_processes 16 --num_machines 2 --machine_rank 1 --main_process_ip "
        "head.cluster --main_process_port 6000 -m hubsdd.pipeline.launch 'my recipe.yaml'")


def test_one_process_needs_no_launcher_and_fsdp_names_no_class_it_does_not_know() -> None:
    assert launch_commands(_recipe("{}"), "r.yaml") == ["hubsdd run r.yaml"]
    (command,) = launch_commands(_recipe("{strategy: fsdp, num_processes: 2}"), "r.yaml")
    assert "--fsdp_transformer_layer_cls_to_wrap" not in command  # accelerate wraps _no_split_modules then
    assert decoder_layer_class({"architectures": ["LlamaForCausalLM"]}) == "LlamaDecoderLayer"
    assert decoder_layer_class({"architectures": ["Qwen3ForCausalLM"]}) == "Qwen3DecoderLayer"
    assert decoder_layer_class({"architectures": ["NoSuchModel"]}) is None


@pytest.mark.parametrize("distributed, message", [
    ("{num_processes: 12, num_machines: 8}", "must be a multiple of num_machines (8)"),
    ("{num_processes: 16, num_machines: 2}", "need main_process_ip"),
    ("{strategy: deepspeed}", "'ddp' or 'fsdp'"),
    ("{num_processes: 8, main_process_ip: 'a b'}", "is not a host name"),
    ("{num_processes: yes}", "expected a number"),
    ("{num_gpus: 8}", "unknown key 'num_gpus'"),
])
def test_bad_topologies_are_refused_at_their_yaml_path(distributed: str, message: str) -> None:
    with pytest.raises(RecipeError) as info:
        _recipe(distributed)
    assert message in str(info.value)
    assert "finetune.distributed" in str(info.value)
