"""Layer 1, specs and config: what a run is (`RunSpec`), the one resolver that turns it into a
validated `RunConfig`, parameter and FLOP counts, and the names every layer shares (`Status`,
the metrics table, file names). Imports nothing else from the package; needs no torch."""
