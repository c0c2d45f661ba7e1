"""The ``merge`` stage (:mod:`.stage`): mergekit configuration and run."""
