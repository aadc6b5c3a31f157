"""Task samplers: seeded sources of :class:`~mlhelpers.tasks.Task` batches (Chapter 1).

:mod:`.base` (the :class:`~.base.TaskSampler` interface), :mod:`.episodic` (N-way K-shot episodes
of a labelled dataset), :mod:`.regression` (sinusoids, linear functions), :mod:`.stream` (a drifting
stream of sinusoids and a replay buffer, Chapter 7), :mod:`.ratings`
(cold-start users), :mod:`.examples` (plain example batches for pre-training) and :mod:`.wrappers`
(random affine distortions, support sets in random order, a fixed pool of tasks). Import from the
submodules.
"""
