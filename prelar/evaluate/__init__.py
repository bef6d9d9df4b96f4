"""Evaluation: open-loop prediction and controllability (`prediction`), the latent-action probe (`probe`),
and the aggregation of runs into the report (imported on demand; no side effects here)."""
