"""eecontrol's Hydra sweeper on current Optuna, with pruning: ``hydra/sweeper=eecontrol_optuna``."""
