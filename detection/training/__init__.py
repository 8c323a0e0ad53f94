"""Training: the stage plan with its fingerprints and the trainer that runs it."""
