"""Cases: label vocabulary and normalisation, reading tabular files, importing cases, splits,
synthetic cases and the regimen parser. May import rocore.store."""
