"""Edge rules: committed readings (and time passing) in, alarms out.

One module per rule family (:mod:`trap`, :mod:`water`, :mod:`health`); :mod:`engine` routes readings
to the rules that watch their device and keeps each rule's memory in SQLite, written in the same
transaction as the reading that changed it, so a restart neither forgets an open alarm nor raises
it twice. :mod:`actions` runs the local actions of an alarm once it is committed.
"""

from edgegw.rules.engine import Context, Observation, RuleEngine

__all__ = ["Context", "Observation", "RuleEngine"]
