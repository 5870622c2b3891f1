"""The one evaluation pipeline: paired outputs (from a file or stored runs) -> per-case scores ->
figures (metrics, tests, intervals, acceptability, agreement) -> views (the dashboard's cached view,
the text tables, the CSV and HTML report). May import the stages before it, never rocore.review."""
