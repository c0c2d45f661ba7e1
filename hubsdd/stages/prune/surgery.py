"""Layer surgery: delete decoder layers so that stock ``from_pretrained`` reloads the result.

No list of supported families. The rule, for any architecture:

* the decoder layers are the one ``nn.ModuleList`` of the model (of its language model, for a
  multimodal one) whose length is the text config's ``num_hidden_layers``;
* removing layers is deleting entries of that list, renumbering the per-layer index the kept
  layers carry (``layer_idx`` and the like, found by value: an int attribute equal to the layer's
  position, or position + 1, in every layer), and editing the config: every list as long as the
  layer count is sliced (``layer_types``, sliding-window lists, ``no_rope_layers``, ...), lists of
  layer indices (``mlp_only_layers``, ...) and ``per_layer_config`` are renumbered, and the scalar
  fields that count a prefix of layers (``max_window_layers``, ``first_k_dense_replace``, ...) are
  recounted;
* then the edit is *proved*: the edited config is saved and read back (``config.json``, as
  ``from_pretrained`` will read it), a weightless copy of the model is built from it on the meta
  device, and its parameter names and shapes and every layer module's settings (window sizes,
  rope flags, indices, depth-derived scales...) must equal the pruned model's. Anything a config edit cannot
  express (a period/offset layer pattern, a KV cache shared between layers, per-layer weights kept
  outside the list) shows up there as a difference, and surgery refuses with a clear error instead
  of writing a checkpoint that reloads as a different model. Removing every layer of one kind
  (the only attention layers of a hybrid) is a :class:`DataError` naming ``prune.layers``.

Known exceptions, where the two agree but the model still is not a stack of independent layers,
are listed in :data:`REFUSED_ARCHITECTURES`; ``tests/test_prune_architectures.py`` sweeps every
causal-LM architecture of the installed transformers to keep that list honest.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Any, Iterable

from ...core.errors import DataError, UnsupportedArchitectureError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

log = logging.getLogger("hubsdd.surgery")

# model_type -> why its layers cannot be removed although the edited config rebuilds the same
# modules (found by the architecture sweep, bench/prune_architectures.py).
REFUSED_ARCHITECTURES: dict[str, str] = {
    # Layers run more than once, or in a loop the config places by index.
    "dory": "it is a recurrent-depth model: a block of layers runs repeatedly (n_recurrent_layers)",
    "hrm_text": "it is a hierarchical recurrent model: its layer stacks run repeatedly",
    "inkling2_loop_text": "a range of its layers runs in a loop (loop_layer_index_start/end) with per-loop "
                          "parameters outside the layer list",
    # The rest would also be caught by the proof below; named here for a clearer message.
    "jamba": "attention and expert layers are placed by period and offset (attn_layer_period, "
             "expert_layer_period), which cannot describe an arbitrary subset of layers",
    "recurrent_gemma": "its layers follow a repeating block pattern (block_types) that a subset breaks",
    "diffllama": "each layer's lambda_init depends on its depth, so a kept layer would change on reload",
    "beam": "each layer's residual scaling depends on its depth, so a kept layer would change on reload",
    "minicpm3": "its residual scale depends on the number of layers (scale_depth / sqrt(num_hidden_layers))",
    "minimax": "each layer's attention decay depends on its depth relative to num_hidden_layers",
}

# Scalar config fields that say "the first k layers are different": recounted over the kept layers.
PREFIX_COUNT_FIELDS = ("max_window_layers", "first_k_dense_replace", "num_dense_layers")
# Attribute names that can hold a layer's position (checked by value, layer by layer, before use).
_INDEX_NAME_PARTS = ("idx", "index", "layer_id", "layer_num", "layer_number", "block_id")
# Module attributes that are not architecture settings.
_IGNORED_ATTRIBUTES = {"training", "_is_hf_initialized", "_is_stateful", "_hf_hook"}

_FIX = ("prune a decoder-only model whose layers form one list and whose config describes each layer "
        "(Llama, Qwen, Mistral, Gemma, Phi, Cohere, StableLM, Starcoder2, GPT-NeoX, Falcon, GPT-2 and most "
        "others), or remove layers from this model by hand")


def refusal(model: Any, why: str, fix: str = _FIX) -> UnsupportedArchitectureError:
    model_type = getattr(getattr(model, "config", None), "model_type", "?")
    return UnsupportedArchitectureError(
        f"layer surgery cannot prune model_type {model_type!r} ({type(model).__name__}): {why}", fix=fix)


def text_config(model: Any) -> "PretrainedConfig":
    """The config that describes the decoder stack (the model's own, or its text sub-config)."""
    config = model.config
    if not hasattr(config, "get_text_config"):
        return config
    try:
        return config.get_text_config(decoder=True)
    except ValueError as exc:
        raise refusal(model, f"its config has several text configs ({exc})") from None


def decoder_layers(model: "PreTrainedModel") -> "torch.nn.ModuleList":
    """The ModuleList of decoder layers, or a clear error for a model that has none."""
    import torch

    config = model.config
    model_type = config.model_type
    if model_type in REFUSED_ARCHITECTURES:
        raise refusal(model, REFUSED_ARCHITECTURES[model_type])
    if getattr(config, "is_encoder_decoder", False) or any(
            hasattr(config, f) for f in ("encoder_layers", "num_encoder_layers")):
        raise refusal(model, "it is (half of) an encoder-decoder model; layer surgery works on decoder-only "
                             "stacks", fix="prune a decoder-only model")
    total = getattr(text_config(model), "num_hidden_layers", None)
    if not isinstance(total, int) or total < 1:
        raise refusal(model, "its config has no num_hidden_layers")
    # Look inside the language model first: a vision tower may have as many layers as the text stack.
    scopes = [model.get_decoder()] if hasattr(model, "get_decoder") else []
    for scope in scopes + [model]:
        found = [(name, m) for name, m in scope.named_modules()
                 if isinstance(m, torch.nn.ModuleList) and len(m) == total]
        if found:
            break
    if not found:
        raise refusal(model, f"no list of its {total} layers (num_hidden_layers) was found among its modules")
    if len(found) > 1:
        names = ", ".join(name for name, _ in found)
        raise refusal(model, f"{len(found)} module lists have num_hidden_layers={total} entries ({names}): "
                             "each layer is split across several lists")
    return found[0][1]


# --------------------------------------------------------------------------- the edit


def remove_layers(model: "PreTrainedModel", drop: Iterable[int]) -> "PreTrainedModel":
    """Delete decoder layers in place and make config and modules consistent for save/reload.

    Raises :class:`UnsupportedArchitectureError` when the edited config would not rebuild the
    pruned model; the model is then left half-edited (prove the edit on :func:`skeleton` first to
    keep a real model intact, as the prune stage does)."""
    layers = decoder_layers(model)
    total = len(layers)
    drop = sorted(set(int(i) for i in drop))
    if not drop:
        return model
    if drop[0] < 0 or drop[-1] >= total:
        raise DataError(f"prune.layers: layer indices must be in 0..{total - 1}, got {drop}")
    if len(drop) >= total:
        raise DataError(f"prune.blocks: cannot remove all {total} layers",
                        fix=f"remove at most {total - 1}")
    _check_independent_layers(model, layers)
    keep = [i for i in range(total) if i not in drop]
    index_attributes = _index_attributes(layers)
    kept_modules = [layers[i] for i in keep]
    # Rebuild the list in place: the parent module keeps pointing at the same ModuleList object.
    for _ in range(total):
        del layers[0]
    for new_idx, layer in enumerate(kept_modules):
        layers.append(layer)
        modules = dict(layer.named_modules())
        for (path, attr), offset in index_attributes.items():
            if path in modules and hasattr(modules[path], attr):
                setattr(modules[path], attr, new_idx + offset)
    for cfg in _layer_configs(model, total):
        edit_config(cfg, keep, total)
    _prove(model, keep, total - len(keep))
    return model


def check_prunable(model: "PreTrainedModel", drop: Iterable[int]) -> None:
    """Raise the error :func:`remove_layers` would raise for ``drop``, leaving ``model`` untouched:
    the surgery runs on a weightless copy (cheap even for an 8B model)."""
    remove_layers(skeleton(model), drop)


def _check_independent_layers(model: Any, layers: Any) -> None:
    """Refuse layers that share weights: deleting one would delete part of another."""
    owner: dict[int, int] = {}
    for i, layer in enumerate(layers):
        for _, p in layer.named_parameters(remove_duplicate=False):
            j = owner.setdefault(id(p), i)
            if j != i:
                raise refusal(model, f"layers {j} and {i} share weights (one block reused across depth)")


def _index_attributes(layers: Any) -> dict[tuple[str, str], int]:
    """(module path inside a layer, attribute) -> offset, for every int attribute that equals the
    layer's position + offset in every layer that has it (``layer_idx``: offset 0,
    ``layer_number``: usually 1). Checked by value, so a count that merely shares the name is left alone."""
    seen: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for position, layer in enumerate(layers):
        for path, module in layer.named_modules():
            for attr, value in vars(module).items():
                if type(value) is int and _is_index_name(attr):
                    seen.setdefault((path, attr), []).append((position, value))
    found = {}
    for key, pairs in seen.items():
        offsets = {value - position for position, value in pairs}
        if len(offsets) == 1 and (len(pairs) > 1 or len(layers) == 1):
            found[key] = offsets.pop()
    return found


def _is_index_name(attr: str) -> bool:
    return any(part in attr.lower() for part in _INDEX_NAME_PARTS)


def _layer_configs(model: Any, total: int) -> list[Any]:
    configs = [model.config]
    text = text_config(model)
    if text is not model.config:
        configs.append(text)
    return [c for c in configs if getattr(c, "num_hidden_layers", None) == total]


def _is_index_list(value: Any, total: int) -> bool:
    return (isinstance(value, (list, tuple)) and all(type(v) is int for v in value)
            and list(value) == sorted(set(value)) and all(0 <= v < total for v in value))


def edit_config(cfg: Any, keep: list[int], total: int) -> None:
    """Make ``cfg`` describe the kept layers ``keep`` (old indices) of ``total``."""
    new_index = {old: new for new, old in enumerate(keep)}
    heterogeneity = cfg.__dict__.get("_heterogeneity_spec")
    _renumber_sparse_step(cfg, keep)
    for key, value in list(vars(cfg).items()):
        if key.startswith("_") or key == "architectures":
            continue
        named_as_indices = any(part in key for part in ("layers", "idxs", "ids", "indices", "layer_map"))
        if named_as_indices and _is_index_list(value, total) and (len(value) != total
                                                                  or list(value) == list(range(total))):
            # A list of layer indices (mlp_only_layers, full_attn_idxs, ...): keep the kept ones, renumbered.
            setattr(cfg, key, type(value)(new_index[v] for v in value if v in new_index))
        elif isinstance(value, (list, tuple)) and len(value) == total:
            kept = type(value)(value[i] for i in keep)
            gone = [v for v in dict.fromkeys(value) if isinstance(v, str) and v not in kept]
            if gone:
                # A hybrid left without any attention (or any recurrent) layer gets a cache it cannot use.
                raise DataError(
                    f"prune: removing layers {[i for i in range(total) if i not in keep]} would leave no "
                    f"{gone[0]!r} layer (config field {key}: {', '.join(map(str, dict.fromkeys(value)))} before)",
                    fix="remove fewer blocks, or name layers to remove with `prune.layers`")
            setattr(cfg, key, kept)
    for key in PREFIX_COUNT_FIELDS:
        value = cfg.__dict__.get(key)
        if type(value) is int:
            setattr(cfg, key, sum(1 for i in keep if i < value))
    start, end, interval = (cfg.__dict__.get(k) for k in ("moe_layer_start_index", "moe_layer_end_index",
                                                         "moe_layer_interval"))
    if type(start) is int and type(end) is int and interval == 1:
        # MoE on a contiguous range of layers stays a contiguous range (end -1: to the last layer).
        cfg.moe_layer_start_index = sum(1 for i in keep if i < start)
        if end >= 0:
            cfg.moe_layer_end_index = sum(1 for i in keep if i <= end) - 1
    cfg.num_hidden_layers = len(keep)
    if heterogeneity is not None:
        # transformers' heterogeneous configs: overrides keyed by layer index.
        overrides = {new: copy.deepcopy(heterogeneity.per_layer_overrides[old])
                     for new, old in enumerate(keep) if old in heterogeneity.per_layer_overrides}
        cfg.__dict__.pop("_heterogeneity_spec")
        cfg.per_layer_config = overrides


def _renumber_sparse_step(cfg: Any, keep: list[int]) -> None:
    """``decoder_sparse_step`` (every k-th layer is MoE) cannot describe an arbitrary subset of layers;
    ``mlp_only_layers`` (these layers are dense) can: turn the first into the second."""
    step, dense = cfg.__dict__.get("decoder_sparse_step"), cfg.__dict__.get("mlp_only_layers")
    experts = getattr(cfg, "num_experts", 0) or 0
    if type(step) is not int or step <= 1 or not isinstance(dense, list) or experts <= 0:
        return
    cfg.mlp_only_layers = [i for i in sorted(set(dense) | {i for i in keep if (i + 1) % step}) if i in keep]
    cfg.decoder_sparse_step = 1


# --------------------------------------------------------------------------- the proof


def skeleton(model: Any) -> Any:
    """A weightless copy of ``model`` (meta device) built from its config as ``from_pretrained``
    builds it: the config written to ``config.json`` and read back, the model made from that."""
    import tempfile

    import torch

    config = model.config
    try:
        with tempfile.TemporaryDirectory(prefix="hubsdd-config-") as tmp:
            config.save_pretrained(tmp)
            reloaded = type(config).from_pretrained(tmp)
    except Exception as exc:  # any validation error of the edited config
        raise refusal(model, f"the edited config does not load back: {_one_line(exc)}") from None
    with torch.device("meta"):
        try:
            return type(model)._from_config(reloaded)
        except Exception as exc:
            raise refusal(model, f"the edited config does not build a model: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def _settings(module: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k not in _IGNORED_ATTRIBUTES and _is_plain(v)}


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return value is None or type(value) in (int, float, bool, str)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _prove(model: Any, keep: list[int], dropped: int) -> None:
    """Refuse unless a model rebuilt from the edited config has the pruned model's weights and settings."""
    rebuilt = skeleton(model)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    layer_list = decoder_layers(model)
    if ours != theirs:
        missing = sorted(set(ours) - set(theirs))
        extra = sorted(set(theirs) - set(ours))
        shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
        if missing:
            detail = f"{missing[0]} would not be loaded"
        elif extra:
            detail = f"{extra[0]} would be newly initialised"
        else:
            prefix = next(name for name, m in model.named_modules() if m is layer_list) + "."
            where = "" if shapes[0].startswith(prefix) else " (a weight outside the layer list holds a slice per layer)"
            detail = f"{shapes[0]} would change shape {ours[shapes[0]]} -> {theirs[shapes[0]]}{where}"
        raise refusal(model, f"after removing layers (kept {keep}), the edited config describes other weights: "
                             f"{detail}")
    layer_modules = {id(m) for m in layer_list.modules()}
    rebuilt_modules = dict(rebuilt.named_modules())
    for name, module in model.named_modules():
        other = rebuilt_modules.get(name)
        if other is None or type(other) is not type(module):
            raise refusal(model, f"after removing layers, module {name} would be rebuilt as "
                                 f"{type(other).__name__ if other is not None else 'nothing'}")
        ours_settings, theirs_settings = _settings(module), _settings(other)
        for attr in sorted(set(ours_settings) | set(theirs_settings)):
            a, b = ours_settings.get(attr), theirs_settings.get(attr)
            if _same(a, b):
                continue
            if isinstance(a, (list, tuple)) and len(a) == len(keep) + dropped and b == type(a)(a[i] for i in keep):
                setattr(module, attr, b)  # a module's copy of a per-layer config list
            elif id(module) not in layer_modules:
                # Outside the layers, settings are derived from the (edited) config: take the rebuilt
                # model's, which is what a reload will have.
                setattr(module, attr, b)
            else:
                raise refusal(model, f"after removing layers (kept {keep}), {name}.{attr} would be {b!r} "
                                     f"on reload instead of {a!r}: the config cannot describe the kept layers")
