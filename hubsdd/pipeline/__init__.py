"""The pipeline layer: runs the stages in order and keeps their records.

- :mod:`.runner`: the stage graph (``STAGES``), fingerprints, staging, the run lock, ``run``.
- :mod:`.stage_records`: sealed ``stage.json`` records, disk errors.
- :mod:`.preflight`: checks that need the model or data, as early as each fact is known.
- :mod:`.launch`: ``accelerate launch -m hubsdd.pipeline.launch RECIPE``, data-parallel fine-tuning.
- :mod:`.launch_commands`: the ``accelerate launch`` command lines for a recipe.
"""
