"""mlhelpers: the helper package of the open textbook *Learning to Learn*.

Each chapter derives an idea from scratch, then imports the helper that packages it. Layers import
only downwards: data -> tasks and samplers -> learners -> training and evaluation -> chapters.

- :mod:`mlhelpers.data`: data only: image collections, the shipped Omniglot, augmentation (Chapter 1).
- :mod:`mlhelpers.tasks`: the batched :class:`~mlhelpers.tasks.Task` type (Chapter 1).
- :mod:`mlhelpers.samplers`: seeded task samplers, episodic and regression (Chapter 1).
- :mod:`mlhelpers.models`: conv4 and MLP backbones.
- :mod:`mlhelpers.learners`: meta-learners sharing one interface (Chapters 3-5).
- :mod:`mlhelpers.learned_optimizers`: learned update rules, the LSTM optimisers (Chapter 9).
- :mod:`mlhelpers.config`: quick mode and devices.
"""

__version__ = "0.1.0"

from mlhelpers.config import budget, default_device, quick_mode, set_quick_mode
from mlhelpers.seeding import seed_everything
from mlhelpers.tasks import Task

__all__ = ["Task", "budget", "default_device", "quick_mode", "seed_everything", "set_quick_mode"]
