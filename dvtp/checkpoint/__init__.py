"""Load (and write) LLaDA-V and LLaDA checkpoint folders in their published formats.

`load(path)` reads a local checkpoint folder and returns a ready model in eval mode with
``model.processor`` (a `dvtp.vlm.processor.LLaDAVProcessor` on the folder's tokenizer)
and ``model.config.mask_token_id`` set. The weights are loaded by transformers'
``from_pretrained`` (with a ``key_mapping`` from the published names to transformers'
names), so low-memory loading, ``dtype`` and ``device_map="auto"`` are transformers' and
accelerate's. `save_llada_v` / `save_llada` write models back in the published formats.

Supported formats
=================

The format is decided from ``config.json`` (``model_type``, else ``architectures``) and
checked against the weight names (``model.safetensors.index.json`` + its shards, or a
single ``model.safetensors``; ``.bin`` weights are not supported).

1. **LLaDA-V** (``model_type: "llava_llada"``, ``architectures: ["LlavaLLaDAModelLM"]``)
   -> `dvtp.vlm.model.LLaDAVForConditionalGeneration`.

   Language-model fields (Llama style; defaults are those of LLaDA-V's own config class
   when a field is absent): ``hidden_size``, ``intermediate_size``,
   ``num_hidden_layers``, ``num_attention_heads``, ``vocab_size`` (required);
   ``num_key_value_heads`` (default: ``num_attention_heads``), ``hidden_act`` ("silu"),
   ``max_position_embeddings`` (2048), ``rms_norm_eps`` (1e-6), ``rope_theta``
   (10000.0), ``rope_scaling`` (null, or ``{"type": "linear", "factor": f}``),
   ``attention_bias`` (false), ``tie_word_embeddings`` (false), ``initializer_range``,
   ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (metadata; an id outside the
   vocabulary, like the Llama-3 bos 128000 LLaDA's renamed config carries, is dropped)
   -> the text config (a `transformers.LlamaConfig`, run bidirectionally), ``rope_theta``
   and ``rope_scaling`` going into ``rope_parameters``; ``torch_dtype`` / ``dtype`` is the
   default load dtype. ``pretraining_tp`` is ignored (it only slices the same matmuls).

   Multimodal fields, each checked:

   * ``mm_projector_type`` must be ``"mlp2x_gelu"`` (Linear, exact GELU, Linear);
   * ``mm_patch_merge_type`` must be ``"spatial_unpad"`` (there is an ``image_newline``);
   * ``image_aspect_ratio`` must be ``"anyres_max_N"`` -> ``vision_aspect_ratio`` (N is
     the view budget of `dvtp.vlm.packing`);
   * ``image_grid_pinpoints``: a list of ``[width, height]`` pairs, or LLaDA-V's
     training-script string ``"(1x1),...,(6x6)"`` (expanded as its ``train.py`` does:
     every ``(i, j)`` from the first to the last pair, times the view size) -> stored
     swapped (``[height, width]``) in the `LlavaOnevisionConfig`, see `dvtp.vlm.config`;
   * ``mm_use_im_start_end`` must be false/absent and ``mm_resampler_type`` null/absent;
   * ``mm_hidden_size`` must equal the tower's width;
   * ``mm_vision_tower`` must name a SigLIP so400m-patch14-384 tower (e.g.
     ``"google/siglip2-so400m-patch14-384"``) unless ``dvtp_vision_config`` is present;
   * ``mm_vision_select_layer`` and ``mm_vision_select_feature`` are not used: LLaDA-V's
     SigLIP tower is stored with its last encoder layer already deleted and always
     returns its last remaining layer's output (``hidden_states[-1]``, no post-layernorm,
     no CLS token), whatever they say; ``mm_newline_position``,
     ``tokenizer_model_max_length``, ``tokenizer_padding_side``, ``use_mm_proj`` and the
     training-only fields are ignored.

   **Inferred (not in config.json):** the SigLIP tower's own sizes. They are
   `dvtp.vlm.config.siglip_so400m_config` (width 1152, MLP 4304, 16 heads, 384 px,
   patch 14, ``gelu_pytorch_tanh``, LayerNorm eps 1e-6, no pooling head) with the layer
   count taken from the weight names (``...encoder.layers.N.``: 26 for LLaDA-V). A folder
   written by `save_llada_v` from a model whose tower is not so400m carries a
   ``dvtp_vision_config`` dict (a `SiglipVisionConfig`'s fields; a dvtp extension,
   ignored by LLaDA-V's code) which is used instead. Every tensor's shape is then checked
   against the model built from these sizes.

   Weights (published name -> transformers name, ``key_mapping`` `LLADA_V_KEY_MAPPING`)::

       model.vision_tower.vision_tower.vision_model.X -> model.vision_tower.X
           (X: embeddings.*, encoder.layers.N.*, post_layernorm.*)
       model.mm_projector.0.{weight,bias}           -> model.multi_modal_projector.linear_1.*
       model.mm_projector.2.{weight,bias}           -> model.multi_modal_projector.linear_2.*
       model.embed_tokens.weight                    -> model.language_model.embed_tokens.weight
       model.layers.N.*                             -> model.language_model.layers.N.*
       model.norm.weight                            -> model.language_model.norm.weight
       model.image_newline, lm_head.weight          (same names)

2. **LLaDA-8B (Instruct / Base), OLMo style** (``model_type: "llada"`` with ``d_model``;
   ``architectures: ["LLaDAModelLM"]``) -> `dvtp.models.LLaDALM`. Fields: ``d_model`` ->
   ``hidden_size``; ``n_heads`` -> ``num_attention_heads``; ``n_kv_heads`` ->
   ``num_key_value_heads`` (null: ``n_heads``; 1 when ``multi_query_attention``);
   ``n_layers`` -> ``num_hidden_layers``; ``mlp_hidden_size`` (else ``mlp_ratio *
   d_model``) -> ``intermediate_size``; ``embedding_size`` (else ``vocab_size``) ->
   ``vocab_size`` (the embedding and LM-head rows); ``max_sequence_length`` ->
   ``max_position_embeddings``; ``rope_theta``, ``rms_norm_eps``; ``weight_tying`` ->
   ``tie_word_embeddings``; ``eos_token_id``, ``pad_token_id``; ``mask_token_id``
   (checked against the tokenizer). Checked: ``block_type == "llama"``,
   ``layer_norm_type == "rms"``, ``activation_type == "silu"``, ``include_bias`` and
   ``include_qkv_bias`` false, and (when present) ``alibi`` false, ``rope`` true,
   ``scale_logits``/``input_emb_norm``/``attention_layer_norm`` false,
   ``layer_norm_with_affine`` true, ``clip_qkv`` null. RoPE is the rotate-half
   convention of Llama, so q/k are not permuted. Weights (`LLADA_KEY_MAPPING`)::

       model.transformer.wte.weight              -> model.embed_tokens.weight
       model.transformer.blocks.N.q_proj/k_proj/v_proj -> model.layers.N.self_attn.{q,k,v}_proj
       model.transformer.blocks.N.attn_out       -> model.layers.N.self_attn.o_proj
       model.transformer.blocks.N.ff_proj        -> model.layers.N.mlp.gate_proj
       model.transformer.blocks.N.up_proj        -> model.layers.N.mlp.up_proj
       model.transformer.blocks.N.ff_out         -> model.layers.N.mlp.down_proj
       model.transformer.blocks.N.attn_norm      -> model.layers.N.input_layernorm
       model.transformer.blocks.N.ff_norm        -> model.layers.N.post_attention_layernorm
       model.transformer.ln_f.weight             -> model.norm.weight
       model.transformer.ff_out.weight           -> lm_head.weight

3. **LLaDA with Llama-style names** (``model_type: "llada"`` with ``hidden_size``: what
   LLaDA-V's ``rename_checkpoint.py`` produces) -> `dvtp.models.LLaDALM`; the Llama
   fields of format 1, weight names as transformers' (no mapping).

Tokenizer (all formats): ``tokenizer.json`` + ``tokenizer_config.json`` (+
``special_tokens_map.json``), loaded with ``transformers.AutoTokenizer``; it must contain
``<|mdm_mask|>``, ``<|eot_id|>``, ``<|startoftext|>``, ``<|endoftext|>``,
``<|start_header_id|>``, ``<|end_header_id|>``. ``model.config.mask_token_id`` is the id
of ``<|mdm_mask|>`` (126336 for the 8B models). The chat template is the one in
``tokenizer_config.json`` (when absent the processor uses LLaDA's).

Errors: the arguments (``dtype``, ``device``, ``device_map``, ``progress``) are checked
first, before the folder is opened: a device that is not usable here (``"cuda"`` on a
CPU-only torch, ``"bogus"``) is a ``ValueError`` naming the argument and the usable
devices. A missing folder raises ``FileNotFoundError``; anything else that is not one of
these formats (no config.json, bad JSON, unknown ``model_type``, an unsupported field
value, a shard named by the index that is absent, no weights, missing tokenizer files or
special tokens) raises ``ValueError`` naming the folder, the field/file/key and what is
expected, before the model is built. The weight names and shapes are checked against
the model (built on the meta device) before any tensor is read, and transformers'
loading report is checked again after ``from_pretrained``: a missing weight (which would
be left randomly initialised), an unexpected tensor or a shape mismatch is a
``ValueError`` listing the first keys in the checkpoint's own naming. The stored dtypes
(safetensors headers) are checked at the same time: a floating parameter may be stored as
F16, BF16, F32 (mixed freely; converted to the load dtype) or F64; an integer, bool or
8-bit float tensor, which transformers would cast silently, is a ``ValueError`` naming
its file and key.
"""
from __future__ import annotations

from .formats import LLADA_KEY_MAPPING, LLADA_V_KEY_MAPPING, REQUIRED_SPECIAL_TOKENS
from .loading import load
from .saving import save_llada, save_llada_v

__all__ = [
    "load",
    "save_llada_v",
    "save_llada",
    "LLADA_V_KEY_MAPPING",
    "LLADA_KEY_MAPPING",
    "REQUIRED_SPECIAL_TOKENS",
]
