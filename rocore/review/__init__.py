"""Blinded review: people, roles and sign-in, studies, randomized assignments and append-only
ratings. May import the stages before it; its statistics come from rocore.evaluation."""
