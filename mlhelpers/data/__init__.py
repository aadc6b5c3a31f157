"""Data, importing nothing above it: labelled collections (:mod:`.labelled`), the shipped Omniglot
(:mod:`.omniglot`), augmentation transforms (:mod:`.augment`) and MovieLens ratings
(:mod:`.ratings`). The samplers that draw tasks from them are in :mod:`mlhelpers.samplers`.
Import from the submodules."""
