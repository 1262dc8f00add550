"""Configuration files shipped with jmlr: ``demo_quick.yaml`` and ``demo_full.yaml`` are what ``jmlr demo`` runs."""
