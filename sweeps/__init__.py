"""Sweeps: resumable Optuna studies over every fusion head, logged to MLflow.

    python -m sweeps --fusion mamba --trials 50 [--storage postgresql://...] [--workers N]

Why this shape: a sweep runs for hours, so its whole state lives in the Optuna storage
(SQLite by default, PostgreSQL to share one study among machines) and in each trial's run
folder. Stopping it at any moment and rerunning the same command continues the same study:
finished trials are kept, an interrupted trial is retried with the same parameters in its
own folder (training resumes from `last.pt`), and no trial is counted twice. Every trial is
the training run itself in MLflow, nested under one parent run per sweep that ends up with
the best parameters and Optuna's plots.

Modules: `config` (options), `space` (spaces.yaml), `study` (storage, objective, worker
loop), `tracking` (MLflow parent and summary), `launch` (processes), `worker` (one process).
"""
