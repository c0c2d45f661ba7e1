"""The ``card`` stage (:mod:`.stage`): the release folders, metadata and the model and dataset
cards, rendered from the Jinja templates in :mod:`.templates`."""
