"""Experience-pool collection and data-driven low-rank adaptation (offline RL for ABR and CJS, supervised VP)."""
