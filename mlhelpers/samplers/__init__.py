"""Task samplers: seeded sources of :class:`~mlhelpers.tasks.Task` batches (Chapter 1).

:mod:`.base` (the :class:`~.base.TaskSampler` interface and the wrapper base), :mod:`.episodic`
(N-way K-shot episodes of a labelled dataset), :mod:`.regression` (sinusoids, linear functions),
:mod:`.ratings` (cold-start users), and two wrappers: :mod:`.augmented` (random affine
distortions) and :mod:`.shuffled` (support sets in random order). Import from the submodules.
"""
