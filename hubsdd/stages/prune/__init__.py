"""The ``prune`` stage: score the decoder blocks, remove the chosen ones.

- :mod:`.stage`: the shared scoring pass (angular distances, Block Influence) and ``run_prune``.
- :mod:`.surgery`: layer removal for any decoder-only architecture, checked against a weightless rebuild.
- :mod:`.scorers`: the block scorers (``prune.method``), one module each; more through the
  entry-point group ``hubsdd.block_scorers``.
"""
