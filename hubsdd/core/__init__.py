"""The core layer: what every other layer builds on and nothing here builds on them.

The recipe (:mod:`.recipe`, a package: one module per group of sections), errors, atomic files,
data sources, model loading and device facts, chat encoding, figures, progress and the work log,
plug-in registries, and the stage contract every stage is written against: :mod:`.stage_io`
(``StageContext``, ``StageOutput``, ``StageResult``), :mod:`.records`, :mod:`.outputs` and
:mod:`.evaluate_outputs` (the typed records stages leave for each other), :mod:`.teacher_logits`
(written by distill, read by finetune), :mod:`.stats` and :mod:`.evidence` (the paired bootstrap,
read by evaluate, the card and the summary), :mod:`.release_choice`.

Modules here import only each other (and third-party libraries); nothing is imported here.
"""
