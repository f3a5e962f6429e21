"""What is installed: eecontrol's version, its extras and the versions of its main packages.

Read from package metadata only (no torch or Lightning import), so ``eecontrol --version``
stays fast.
"""

from __future__ import annotations

from importlib import metadata

from packaging.requirements import Requirement

MAIN_PACKAGES = ("torch", "lightning", "optuna", "hydra-core", "wandb", "transformers")


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def extras_status(dist: str = "eecontrol") -> dict[str, list[str]]:
    """Each extra of ``dist`` mapped to its requirements that are not installed.

    Args:
        dist: the distribution whose extras to check.

    Returns:
        ``{extra: [missing requirement names]}``; an empty list means the extra is installed.
    """
    missing: dict[str, list[str]] = {}
    for line in metadata.requires(dist) or []:
        req = Requirement(line)
        if req.marker is None:
            continue
        extras = [e for e in metadata.metadata(dist).get_all("Provides-Extra") or []]
        for extra in extras:
            if req.marker.evaluate({"extra": extra}):
                if req.name.lower() == dist:  # eecontrol[text,sweeps]: the union
                    continue
                have = _installed(req.name)
                ok = have is not None and req.specifier.contains(have, prereleases=True)
                missing.setdefault(extra, [])
                if not ok:
                    missing[extra].append(req.name)
    return missing


def version_text(dist: str = "eecontrol") -> str:
    """The text ``eecontrol --version`` prints: version, extras, main package versions."""
    lines = [f"eecontrol {_installed(dist) or 'unknown (not installed)'}"]
    extras = extras_status(dist) if _installed(dist) else {}
    if extras:
        have = [e for e, miss in sorted(extras.items()) if not miss]
        lack = {e: miss for e, miss in sorted(extras.items()) if miss}
        lines.append("extras installed: " + (", ".join(have) or "none"))
        for extra, miss in lack.items():
            lines.append(
                f"extra {extra}: missing {', '.join(miss)} (pip install 'eecontrol[{extra}]')"
            )
    for name in MAIN_PACKAGES:
        lines.append(f"{name} {_installed(name) or 'not installed'}")
    return "\n".join(lines)
