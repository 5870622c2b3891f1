"""The embedded default: a small base model trained on the spot and the demo database built with
every other stage. May import any stage."""
