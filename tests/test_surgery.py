"""Layer surgery (hubsdd/stages/prune/surgery.py): what the generic rule edits, what it proves, what it refuses.

The sweep over every architecture transformers ships is tests/test_prune_architectures.py."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import make_tiny_model
from hubsdd.stages.prune import surgery
from hubsdd.core.errors import DataError, UnsupportedArchitectureError
from hubsdd.stages.prune.stage import count_parameters
from hubsdd.stages.prune.surgery import check_prunable, decoder_layers, remove_layers
from hubsdd.testing.architectures import prune_and_compare, tiny_config

# The families the old fixed list named, through the generic rule.
ARCHITECTURES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]


def tiny(model_type: str, **overrides):
    config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def ids(seed=1, rows=2, length=40):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 96, (rows, length), generator=g)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_prune_save_reload_same_logits_and_generation(arch, tmp_path):
    model = make_tiny_model(arch, layers=6)
    assert prune_and_compare(model, [2, 3], tmp_path) is None
    assert len(decoder_layers(model)) == 4 and model.config.num_hidden_layers == 4


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text", "qwen2"])
def test_per_layer_config_lists_follow_the_kept_layers(arch, tmp_path):
    # Removing one layer from an alternating sliding/full pattern shifts it: the saved config must
    # say what each kept layer really is, or a reload attends differently.
    model = make_tiny_model(arch, layers=6)
    before = list(getattr(model.config, "layer_types", []) or [])
    remove_layers(model, [1])
    if before:
        assert model.config.layer_types == [before[i] for i in (0, 2, 3, 4, 5)]
    for new_idx, layer in enumerate(decoder_layers(model)):
        assert layer.self_attn.layer_idx == new_idx
    model.save_pretrained(tmp_path / "p")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "p").eval()
    b = ids()  # 40 tokens: longer than the sliding window (16)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=b).logits, reloaded(input_ids=b).logits, rtol=0, atol=1e-6)


def test_layer_index_is_found_by_value_on_the_layer_and_its_modules():
    # GPT-2 keeps its index as `layer_idx` on the attention module only; Falcon on the layer too.
    for arch, where in (("gpt2", lambda layer: layer.attn), ("falcon", lambda layer: layer.self_attention)):
        model = tiny(arch)
        remove_layers(model, [0, 3])
        assert [where(layer).layer_idx for layer in decoder_layers(model)] == [0, 1, 2, 3]


def test_parameter_count_drops_by_the_removed_layers():
    model = make_tiny_model("llama", layers=6)
    per_layer = sum(p.numel() for p in decoder_layers(model)[0].parameters())
    before = count_parameters(model)
    remove_layers(model, [2, 3])
    assert before - count_parameters(model) == 2 * per_layer


def test_prefix_count_fields_are_recounted(tmp_path):
    # DeepSeek-V3: the first k layers are dense. Removing one of them leaves k - 1 dense layers first.
    model = tiny("deepseek_v3", first_k_dense_replace=3)
    assert prune_and_compare(model, [1], tmp_path) is None
    assert model.config.first_k_dense_replace == 2


def test_a_sparse_step_becomes_a_list_of_dense_layers(tmp_path):
    # Qwen2-MoE with every 2nd layer MoE: dropping layer 2 shifts the pattern, which a step cannot say.
    model = tiny("qwen2_moe", decoder_sparse_step=2, mlp_only_layers=[])
    assert prune_and_compare(model, [2], tmp_path) is None
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [0, 3]  # old layers 0 and 4, dense; 1, 3, 5 stay MoE


def test_index_lists_are_renumbered(tmp_path):
    model = tiny("qwen3_moe", mlp_only_layers=[0, 4])
    assert prune_and_compare(model, [2, 3], tmp_path) is None
    assert model.config.mlp_only_layers == [0, 2]


def test_heterogeneous_per_layer_config_is_renumbered(tmp_path):
    config = tiny_config("gemma4_unified_text")
    assert config.layer_types[1::2] == ["full_attention"] * 3
    config.per_layer_config = {i: {"head_dim": 16} for i in (1, 3, 5)}  # Gemma 4 widens full-attention layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert prune_and_compare(model, [2, 3], tmp_path) is None
    assert dict(model.config._heterogeneity_spec.per_layer_overrides) == {1: {"head_dim": 16}, 3: {"head_dim": 16}}
    assert [layer.self_attn.head_dim for layer in decoder_layers(model)] == [8, 16, 8, 16]


def test_a_hybrid_left_without_a_kind_of_layer_is_a_clear_error():
    model = tiny("qwen3_next")  # linear and full attention alternate
    with pytest.raises(DataError) as info:
        check_prunable(model, [1, 3, 5])
    assert "full_attention" in str(info.value) and "prune.layers" in info.value.fix


def test_check_prunable_leaves_the_model_untouched():
    model = make_tiny_model("llama", layers=6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_prunable(model, [2, 3])
    assert len(decoder_layers(model)) == 6 and model.config.num_hidden_layers == 6
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- refusals


def assert_refused(model, *words, drop=(2, 3)):
    with pytest.raises(UnsupportedArchitectureError) as info:
        remove_layers(model, list(drop))
    message = str(info.value)
    assert f"model_type {model.config.model_type!r}" in message and info.value.fix
    for word in words:
        assert word in message
    return message


def test_encoder_decoder_is_refused():
    assert_refused(tiny("bart"), "encoder-decoder")


def test_layers_split_across_several_lists_are_refused():
    assert_refused(tiny("xlm"), "attentions, layer_norm1, ffns, layer_norm2")


def test_layers_sharing_weights_are_refused():
    model = make_tiny_model("llama", layers=6)
    decoder_layers(model)[4].mlp = decoder_layers(model)[1].mlp  # one block reused at two depths
    assert_refused(model, "layers 1 and 4 share weights")


def test_the_proof_refuses_what_the_config_cannot_describe(monkeypatch):
    # Without the known-exceptions list, the proof alone catches each kind of problem.
    monkeypatch.setattr(surgery, "REFUSED_ARCHITECTURES", {})
    # Attention placed by period/offset: the kept layers would be rebuilt as other kinds.
    assert_refused(tiny("jamba"), "would not be loaded")
    # A setting derived from the layer's depth.
    assert_refused(tiny("diffllama"), "lambda_init")
    # A weight outside the layer list with a slice per layer.
    assert_refused(tiny("gemma3n_text"), "embed_tokens_per_layer", "outside the layer list")


def test_known_exceptions_name_the_reason():
    assert_refused(tiny("jamba"), "attn_layer_period")


def test_bad_layer_indices_are_data_errors():
    model = make_tiny_model("llama", layers=4)
    with pytest.raises(DataError):
        remove_layers(model, [4])
    with pytest.raises(DataError):
        remove_layers(model, [0, 1, 2, 3])
