"""The ``finetune`` stage: recover the pruned model's quality with TRL's trainers.

- :mod:`.stage`: ``run_finetune``, ``train_all`` and ``train_variant`` (one variant's training).
- :mod:`.variants`: where a variant lives and what decides its weights (its cache key), its
  dataset, and the small facts read off a Trainer.
- :mod:`.training`: TRL trainer configuration (SFT, GKD, KD from stored teacher log-probabilities),
  LoRA, DDP/FSDP.
- :mod:`.trainer_checkpoints`: Trainer checkpoint completeness.

``accelerate launch -m hubsdd.pipeline.launch RECIPE`` runs it over processes (pipeline code).
"""
