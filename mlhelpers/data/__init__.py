"""Data: labelled collections (:mod:`.labelled`), the shipped Omniglot (:mod:`.omniglot`) and
regression task families (:mod:`.regression`). Import from the submodules."""
