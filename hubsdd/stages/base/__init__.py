"""The ``base`` stage (:mod:`.stage`): a Hub snapshot, local folder or GGUF into a model folder."""
