"""Self-data distillation: the unpruned model rewrites the training data the pruned one learns from.

One module per concern:

- :mod:`.stage`: the ``distill`` stage (``run_distill``): reads the examples, generates in
  resumable shards, selects, writes ``data/train.parquet`` and the stage outputs.
- :mod:`.prompts`: the rewrite prompt templates, and the user turn a student sees.
- :mod:`.checkers`: answer extraction and the rules that keep a rewrite or the original.
- :mod:`.shards`: the parquet files (generation shards and the dataset) and shard keys.
- :mod:`.backends`: the generation engines (``transformers`` with continuous batching, ``vllm``)
  behind one small interface; a new engine goes there.
"""
