"""Every causal-LM architecture of the installed transformers, as a tiny random model, and the
prune -> save -> reload check run on each (``tests/test_prune_architectures.py``,
``bench/prune_architectures.py``).

The tiny configs are made generically, not family by family: each config class is built with its
size fields (whatever they are called there) set to a few dozen, so a model builds in well under a
second; :data:`OVERRIDES` fixes the few config classes whose defaults do not build or have no
layer of some kind in six layers. Architectures that still cannot be built are skipped with the reason.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.errors import UnsupportedArchitectureError

LAYERS = 6
VOCAB = 128
# fp32 logits of a tiny random model are O(1); RWKV's rescaling of every 6th layer (exact in
# arithmetic) moves them by ~2e-5.
LOGITS_ATOL = 1e-4
# Prompts use ids below this: far from the special ids put at the top of the vocabulary.
PROMPT_VOCAB = 96

# Size fields by the names configs give them, and a tiny value for each.
_WIDTH = 32
TINY_FIELDS: dict[str, Any] = {
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "embed_dim", "embedding_dim", "dim", "model_dim",
                     "attention_hidden_size", "lru_width", "word_embed_proj_dim", "hidden_dim",
                     "input_embedding_size", "output_embedding_size", "backbone_hidden_size"), _WIDTH),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "decoder_ffn_dim",
                     "encoder_ffn_dim", "dim_ff", "d_ff", "dff", "dense_intermediate_size", "intermediate_size_mlp",
                     "feed_forward_size", "d_inner", "prefix_dense_intermediate_size"), 64),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "shared_intermediate_size",
                     "expert_ffn_hidden_size", "moe_shared_expert_intermediate_size",
                     "shared_experts_intermediate_size", "router_hidden_size"), 32),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads", "decoder_attention_heads",
                     "encoder_attention_heads", "swa_num_attention_heads", "linear_num_value_heads",
                     "linear_num_heads", "attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "multi_query_group_num", "num_query_groups",
                     "linear_num_key_heads", "index_n_heads"), 2),
    **dict.fromkeys(("head_dim", "kv_channels", "swa_head_dim", "attention_head_dim", "dim_head", "d_head",
                     "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "index_head_dim", "linear_key_head_dim",
                     "linear_value_head_dim", "linear_head_dim", "attention_head_size", "query_pre_attn_scalar",
                     "mamba_head_dim", "mamba_d_head", "mamba_headdim", "hidden_size_per_layer_input",
                     "rotary_dim"), 8),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank", "o_lora_rank", "laurel_rank", "loop_gate_rank", "hc_lowrank",
                     "adapter_rank"), 16),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_topk", "top_k"), 2),
    **dict.fromkeys(("n_group", "topk_group", "n_shared_experts", "num_shared_experts"), 1),
    **dict.fromkeys(("mamba_d_state", "state_size", "ssm_state_size"), 8),
    **dict.fromkeys(("mamba_n_heads", "mamba_num_heads"), 8),
    **dict.fromkeys(("mamba_dt_rank", "time_step_rank"), 4),
    **dict.fromkeys(("mamba_chunk_size", "chunk_size", "index_block_size", "block_size", "attention_chunk_size",
                     "mamba_d_ssm"), 16),
    **dict.fromkeys(("vocab_size", "vocab_size_per_layer_input", "decoder_vocab_size", "unpadded_vocab_size"), VOCAB),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "context_length", "max_seq_len",
                     "original_max_position_embeddings", "model_max_length"), 256),
    **dict.fromkeys(("sliding_window", "sliding_window_size", "window_size", "attention_window_size",
                     "local_attention_window_len"), 8),
    "index_topk": 8,
    "qk_head_dim": 16,
    "num_nextn_predict_layers": 0,
}
# Left None by some defaults although the model cannot derive them.
FILL_WHEN_NONE = ("head_dim", "num_key_value_heads")
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "num_decoder_layers")
# Sub-models of a multimodal config (vision towers) get fewer layers than the text stack, so the
# decoder's ModuleList is the only one of its length.
SUB_LAYERS = 2


class Skip(Exception):
    """This architecture cannot be built from a tiny config here; the message says why."""


def causal_lm_architectures() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _shrink(value: Any, tiny: int) -> Any:
    if isinstance(value, list):
        return [_shrink(v, tiny) for v in value]
    return tiny if isinstance(value, int) and not isinstance(value, bool) and value > tiny else value


def _is_index_list(value: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in value) and value == sorted(set(value))


def tiny_values(values: dict[str, Any], layers: int, aliases: dict[str, str], alternate: bool = True) -> dict[str, Any]:
    """A config's ``to_dict()`` with every size field made tiny and the depth set to ``layers``."""
    old_layers = next((values[k] for k in LAYER_FIELDS if isinstance(values.get(k), int)), None)
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = aliases.get(name, name)
        if value is None:
            if key in FILL_WHEN_NONE:
                out[name] = TINY_FIELDS[key]
            continue
        if name == "per_layer_config" and isinstance(value, dict):
            # transformers' heterogeneous configs: overrides keyed by layer index.
            out[name] = {k: tiny_values(v, layers, {}, alternate) for k, v in value.items() if int(k) < layers}
        elif name in LAYER_FIELDS or key in LAYER_FIELDS:
            out[name] = layers if isinstance(value, int) else value
        elif isinstance(value, dict) and ("model_type" in value or name.endswith("_config")):
            depth = layers if name in ("text_config", "language_config", "llm_config") else SUB_LAYERS
            out[name] = tiny_values(value, depth, {}, alternate)
        elif isinstance(value, list) and old_layers and len(value) == old_layers:
            # A per-layer list sized for the default depth: cut to the tiny depth.
            if _is_index_list(value):
                value = range(layers)
            elif alternate and all(isinstance(v, str) for v in value):
                # Layer kinds: alternate every kind the default uses, so that removing two middle
                # layers of six leaves each kind (a hybrid with no attention layer left is another test).
                kinds = list(dict.fromkeys(value))
                value = [kinds[i % len(kinds)] for i in range(layers)]
            out[name] = _shrink(list(value[:layers]), TINY_FIELDS.get(key, 1 << 62))
        elif (isinstance(value, list) and name.endswith(("_layers", "_idxs", "_ids", "_indices"))
              and _is_index_list(value)):
            out[name] = [v for v in value if v < layers] or ([1, layers - 1] if value else [])
        elif key in TINY_FIELDS:
            out[name] = _shrink(value, TINY_FIELDS[key])
        else:
            out[name] = value
    if "vocab_size" in values:
        # Special ids at the top of the tiny vocabulary, prompts far below them; no EOS, so greedy
        # generation runs its full length.
        special = VOCAB - 1
        for name, value in values.items():
            if name.endswith(("_token_id", "_token_index")) and isinstance(value, int):
                out[name] = special
                special -= 1
        out.update(pad_token_id=0, bos_token_id=1, eos_token_id=None)
        if "kv_lora_rank" in values:
            out["num_key_value_heads"] = TINY_FIELDS["num_attention_heads"]  # multi-head latent attention
        if "is_decoder" in values:
            out["is_decoder"] = True  # BERT-style stacks used as causal LMs
    return out


# Defaults of a few config classes that do not build at all, or not below full size (for LAYERS layers).
OVERRIDES: dict[str, dict[str, Any]] = {
    "gpt_neo": {"attention_types": [[["global", "local"], LAYERS // 2]]},
    "mamba2": {"num_heads": 8},
    "falcon_h1": {"mamba_d_ssm": 64},
    # Zamba's shared attention block reads [hidden, embeddings] concatenated.
    "zamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "attention_hidden_size": 2 * _WIDTH},
    "zamba2": {"layers_block_type": ["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba"],
               "attention_hidden_size": 2 * _WIDTH},
    # All-Mamba by default: give the hybrids attention layers.
    "bamba": {"attn_layer_indices": [1, 3, 5]},
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"] * (LAYERS // 2)},
    "nemotron_h": {"layers_block_type": ["linear_attention", "moe", "full_attention", "linear_attention", "mlp",
                                         "full_attention"]},
    "deepseek_v2": {"num_experts_per_tok": 2},
    "dots1": {"n_routed_experts": 4, "num_experts_per_tok": 2, "n_shared_experts": 1},
    "dory": {"n_input_layers": 2, "n_recurrent_layers": 2, "n_output_layers": 2},
    "reformer": {"attn_layers": ["local"] * LAYERS, "axial_pos_shape": [16, 16], "axial_pos_embds_dim": [16, 16]},
    "dbrx": {"attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0}},
    "dots3_note_text": {"num_key_value_heads": 4},
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv", "conv", "full_attention", "conv"],
                 "num_dense_layers": 1},
    "gemma3n_text": {"layer_types": ["sliding_attention", "full_attention"] * (LAYERS // 2), "num_kv_shared_layers": 2},
    "cohere_compass_text": {"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 10000.0}}},
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 8, "indexer_budget": 16,
                       "indexer_compress_ratio": 4},
}


def tiny_kwargs(config_class: type, layers: int, alternate: bool = True) -> dict[str, Any]:
    """Constructor arguments that make ``config_class`` tiny with ``layers`` decoder layers."""
    values = config_class().to_dict()
    for name in ("transformers_version", "architectures", "_name_or_path", "id2label", "label2id", "model_type"):
        values.pop(name, None)
    aliases = {v: k for k, v in getattr(config_class, "attribute_map", {}).items()}
    kwargs = tiny_values(values, layers, aliases, alternate)
    model_type = getattr(config_class, "model_type", "")
    kwargs.update(OVERRIDES.get(model_type, {}))
    for sub in ("text_config",):
        if isinstance(kwargs.get(sub), dict):
            kwargs[sub].update(OVERRIDES.get(kwargs[sub].get("model_type", ""), {}))
    return kwargs


def tiny_config(model_type: str, layers: int = LAYERS) -> Any:
    from transformers import CONFIG_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
    except (KeyError, ValueError, ImportError) as exc:
        raise Skip(f"no config class ({type(exc).__name__})") from None
    try:
        return config_class(**tiny_kwargs(config_class, layers))
    except Exception:  # some validators want the default order of layer kinds: keep it, cut short
        try:
            return config_class(**tiny_kwargs(config_class, layers, alternate=False))
        except Exception as exc:  # any failure to build a config is a reason to skip, recorded
            raise Skip(f"tiny config refused: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:160] if lines else ''}"


# --------------------------------------------------------------------------- the check


@dataclass
class Outcome:
    """``status``: pass (pruned, saved, reloaded, same logits and generations), refused (the clear
    error, ``detail`` is its text), skip (cannot be built here, ``detail`` says why) or fail."""

    model_type: str
    status: str
    detail: str = ""


def _prompt(seed: int, rows: int, length: int) -> Any:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, PROMPT_VOCAB, (rows, length), generator=g)


def _generate(model: Any, ids: Any, use_cache: bool, new_tokens: int) -> Any:
    import torch

    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, use_cache=use_cache, pad_token_id=0)


def check_architecture(model_type: str, workdir: Path | None = None, new_tokens: int = 12) -> Outcome:
    """Prune two middle layers of a tiny ``model_type``, save as safetensors, reload with stock
    ``AutoModelForCausalLM`` and compare logits and greedy generations (cached and uncached)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..stages.prune.surgery import decoder_layers

    try:
        config = tiny_config(model_type)
    except Skip as exc:
        return Outcome(model_type, "skip", str(exc))
    try:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            model(input_ids=_prompt(1, 2, 12))
        prompt = _prompt(2, 1, 12)
        cached_before = _generate(model, prompt, use_cache=True, new_tokens=new_tokens)
        uncached_before = _generate(model, prompt, use_cache=False, new_tokens=new_tokens)
    except Exception as exc:  # the unpruned tiny model must work before pruning can be judged
        return Outcome(model_type, "skip", f"tiny model does not build or run: {_reason(exc)}")
    if not torch.equal(cached_before, uncached_before):
        return Outcome(model_type, "skip", "cached and uncached generation differ before pruning")
    try:
        layers = decoder_layers(model)
        total = len(layers)
        drop = [total // 2 - 1, total // 2] if total >= 4 else [total - 1]
        problem = prune_and_compare(model, drop, workdir, new_tokens)
    except UnsupportedArchitectureError as exc:
        return Outcome(model_type, "refused", str(exc))
    except ReloadFailed as exc:
        if not _reloads(config, workdir):
            return Outcome(model_type, "skip", f"stock AutoModelForCausalLM cannot reload it even unpruned: "
                                               f"{str(exc)[:100]}")
        return Outcome(model_type, "fail", f"save/reload raised {exc}")
    return Outcome(model_type, "fail", problem) if problem else Outcome(model_type, "pass")


class ReloadFailed(Exception):
    """Saving the pruned model or loading it back with stock transformers raised."""


def prune_and_compare(model: Any, drop: list[int], workdir: Path | None = None, new_tokens: int = 12) -> str | None:
    """Remove layers ``drop`` from ``model`` (:func:`hubsdd.stages.prune.surgery.remove_layers`), save it as
    safetensors, reload it with plain ``AutoModelForCausalLM.from_pretrained``, and compare logits
    and greedy generations (cached and uncached, in memory and reloaded) with the unpruned model
    run with the dropped layers passed through. None when all agree, else what differs.
    :class:`UnsupportedArchitectureError` from the surgery propagates."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..stages.prune.surgery import decoder_layers, remove_layers

    ids, prompt = _prompt(1, 2, 12), _prompt(2, 1, 12)
    # What pruning must compute: the unpruned model with the dropped layers passed through.
    try:
        with bypassed(decoder_layers(model), drop), torch.no_grad():
            reference_logits = model(input_ids=ids, use_cache=False).logits
            reference_tokens = _generate(model, prompt, use_cache=False, new_tokens=new_tokens)
    except Exception as exc:
        return f"the unpruned model does not run with layers {drop} passed through: {_reason(exc)}"
    try:
        remove_layers(model, drop)
    except UnsupportedArchitectureError:
        raise
    except Exception as exc:
        return f"surgery raised {type(exc).__name__}: {exc}"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            model.save_pretrained(tmp, safe_serialization=True)
            if not list(Path(tmp).glob("*.safetensors")):
                return "no safetensors file written"
            reloaded, info = AutoModelForCausalLM.from_pretrained(tmp, output_loading_info=True)
        except Exception as exc:
            raise ReloadFailed(_reason(exc)) from None
    reloaded.eval()
    problems = [f"{k}: {v}" for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys",
                                                                   "mismatched_keys")]
    if problems:
        return "reload: " + "; ".join(problems)[:300]
    if reloaded.config.get_text_config(decoder=True).num_hidden_layers != len(decoder_layers(model)):
        return "reloaded config has the wrong layer count"
    try:
        with torch.no_grad():
            logits = {"in-memory pruned": model(input_ids=ids).logits, "reloaded": reloaded(input_ids=ids).logits}
        for who, got in logits.items():
            if not torch.allclose(got, reference_logits, rtol=0, atol=LOGITS_ATOL):
                return (f"{who} logits differ from the unpruned model's with the layers passed through by "
                        f"{(got - reference_logits).abs().max().item():.3g}")
        for who, m, cache in (("in-memory cached", model, True), ("reloaded cached", reloaded, True),
                              ("reloaded uncached", reloaded, False)):
            if not torch.equal(_generate(m, prompt, use_cache=cache, new_tokens=new_tokens), reference_tokens):
                return f"{who} greedy generation differs from the unpruned model's with the layers passed through"
    except Exception as exc:
        return f"pruned model does not run: {_reason(exc)}"
    return None


@contextmanager
def bypassed(layers: Any, drop: list[int]) -> Iterator[None]:
    """Layers ``drop`` return their input hidden states (the residual stream passes through)."""
    import torch

    def same(a: Any, b: Any) -> bool:
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape

    def pass_through(_module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if isinstance(output, torch.Tensor):
            return hidden
        fields = getattr(output, "_fields", None)
        if fields is not None:
            # Reversible layers (Reformer) return named streams: each comes back as it went in
            # (passed in as `prev_<name>` or `<name>`).
            return output._replace(**{f: kwargs[name] for f in fields for name in (f, f"prev_{f}")
                                      if same(kwargs.get(name), getattr(output, f))})
        if isinstance(output, (tuple, list)):
            # State a layer hands to the next one (a router state, ...) passes through as well.
            rest = [args[k] if k < len(args) and same(args[k], out) else out for k, out in enumerate(output)][1:]
            return type(output)([hidden, *rest]) if isinstance(output, list) else (hidden, *rest)
        raise TypeError(f"cannot pass through a layer returning {type(output).__name__}")

    handles = [layers[i].register_forward_hook(pass_through, with_kwargs=True) for i in drop]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _reloads(config: Any, workdir: Path | None) -> bool:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
            AutoModelForCausalLM.from_pretrained(tmp)
        except Exception:
            return False
    return True


def summarize(outcomes: list[Outcome]) -> str:
    by = Counter(o.status for o in outcomes)
    buildable = len(outcomes) - by["skip"]
    reasons = Counter(o.detail.split(":")[0] for o in outcomes if o.status == "skip")
    why = "; ".join(f"{n} {r}" for r, n in reasons.most_common())
    line = (f"{by['pass']} architectures pass / {buildable} buildable / {by['refused']} refused with a clear error"
            f" / {by['skip']} skipped ({why or 'none'})")
    if by["fail"]:
        line += f" / {by['fail']} FAIL"
    return line
