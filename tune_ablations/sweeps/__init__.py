"""Layer 4, sweeps: the Ray bridge (trainable), search spaces, the plan, the searchers and
schedulers, the Optuna study, the tuner and the one sweep skeleton that every sweep command
runs. Imports the layers below; Ray is imported inside functions."""
