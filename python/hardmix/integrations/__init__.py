"""hardmix inside training frameworks. Each module imports its framework
when it is imported itself (install with the extra of the same name):

- :mod:`hardmix.integrations.lightning`: a Lightning ``Callback`` that builds
  or holds the sampler, checks the Trainer's settings, and carries the
  sampler in the Trainer's checkpoints.
- :mod:`hardmix.integrations.accelerate`: the sampler in ``save_state`` /
  ``load_state``, and the prepared loader's epoch counter after a restore.
- :mod:`hardmix.integrations.transformers`: a ``Trainer`` that trains on the
  sampler's batches, reports per-example losses and checkpoints the sampler.
"""
