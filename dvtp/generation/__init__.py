"""The pieces of the diffusion sampler `dvtp.generate` (the loop itself is `dvtp.sampler`).

* `request`  -- argument checks and the frozen `GenerationRequest` they resolve to;
* `state`    -- `SequenceState`: the padded ``[B, N]`` sequence, the response ids, and
  the one `compact` that pruning goes through;
* `denoise`  -- one LLaDA denoising step on the current block (transfer schedule,
  suppression, Gumbel noise, confidence, threshold and factor decoding);
* `health`   -- `FiniteWatch`: non-finite logits, recorded on the device, reported once;
* `kv_cache` -- `DiffusionCache`: Fast-dLLM's prefix / dual K/V cache as a transformers
  `Cache`, compacted with the sequence when pruning;
* `pruning`  -- the pruning step (policy -> selection -> compaction) and its `PruneEvent`;
* `output`   -- `GenerationOutput`.

Exact semantics: docs/semantics.md.
"""
