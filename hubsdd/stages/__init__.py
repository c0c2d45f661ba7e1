"""The stages layer: one package per stage, each a unit that imports only :mod:`hubsdd.core`.

A stage's entry is ``<package>.stage:run_<name>`` (a function ``(StageContext) -> StageOutput``),
named in :data:`hubsdd.pipeline.runner.STAGES`. Stages never import each other nor the pipeline:
what one stage knows of another comes from that stage's record (:mod:`hubsdd.core.outputs`).
"""
