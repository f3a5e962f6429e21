"""Framework-free helpers (floor 0, beside ``eecontrol.core``): no torch, no Lightning.

- :mod:`eecontrol.util.files`: run-directory files (no write through a symlink, atomic
  replacement, appended lines).
- :mod:`eecontrol.util.redact`: credentials hidden in configs, messages and Hydra's files.
- :mod:`eecontrol.util.checks`: argument checks that are not math (store, study name).
"""
