"""The evaluation suite of ``python -m hardmix eval``: hardmix against the
baselines a user would write without it, on continual and i.i.d. protocols.

- :mod:`.streams`: the protocols (data, tasks, model, budget);
- :mod:`.baselines`: ``er``, ``er-balanced``, ``joint``, ``plain``,
  ``finetune``, written without hardmix;
- :mod:`.methods`: hardmix through the quickstart loop, and its variants;
- :mod:`.metrics`: the figures of a run;
- :mod:`.suite`: runs, paired differences with intervals, the command line.
"""

from .metrics import Monitor, Result
from .streams import PROTOCOLS, Protocol, Stream, make_model, make_stream
from .suite import METHODS, paired, run

__all__ = ["METHODS", "PROTOCOLS", "Monitor", "Protocol", "Result", "Stream", "make_model", "make_stream", "paired",
           "run"]
