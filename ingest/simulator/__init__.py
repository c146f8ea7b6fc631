"""Fleet simulator: physically plausible telemetry for a fleet of Guizhou data centers.

- :func:`generate_fleet` builds a deterministic site registry (liquid-cooled hyperscale campuses
  in the Gui'an hub cluster, hybrid cloud sites, air-cooled enterprise sites, old server rooms);
- :class:`FleetSimulator` is a collector that produces their meter and sensor readings from
  weather (climate normals + psychrolib), IT load and plant physics, with optional faults.

See ``docs/simulator.md`` for the model, its equations and its sources.
"""

from dcpue.ingest.simulator.faults import FaultEvent, FaultKind
from dcpue.ingest.simulator.fleet import archetype_of, generate_fleet
from dcpue.ingest.simulator.simulator import FleetSimulator

__all__ = ["FaultEvent", "FaultKind", "FleetSimulator", "archetype_of", "generate_fleet"]
