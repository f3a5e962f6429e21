"""The application layer (floor 3): the console scripts and what only they do.

- :mod:`eecontrol.app.train`: ``eecontrol-train`` (light: ``--help`` imports no Lightning).
- :mod:`eecontrol.app.job`: one training job (build, fit, test, report).
- :mod:`eecontrol.app.evaluate`: ``eecontrol-eval``.
- :mod:`eecontrol.app.resume`: ``resume=<run dir>``, the run lock and the run-directory checks.
- :mod:`eecontrol.app.cli`: ``eecontrol report|replay|--version``.

``eecontrol.train``, ``eecontrol.evaluate``, ``eecontrol.resume`` and ``eecontrol.cli`` stay
importable (re-export shims) for the console scripts and users' imports.
"""
