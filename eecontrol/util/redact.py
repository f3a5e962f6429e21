"""Credentials never written: URL passwords, secret query parameters, secret env values.

Framework-free (floor 0); :func:`redact_hydra_files` imports Hydra only when called.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# a URL's userinfo password (scheme://user:PASSWORD@host) and credential query parameters
# (?password=..., &token=...); both forms are hidden wherever a config or message is written
_SECRET_PARAMS = (
    "password|passwd|pwd|pass|secret|token|api_key|apikey|access_key|secret_key|"
    "auth|auth_token|access_token|sslpassword|key"
)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#@:\s'\"]*):[^/?#@\s'\"]*@")
_QUERY = re.compile(rf"(?P<head>[?&;](?:{_SECRET_PARAMS})=)[^&#\s'\"]*", re.IGNORECASE)


def redact_url(url: Any) -> Any:
    """Hides the credentials of a URL: ``postgresql://user:***@host/db?password=***``.

    Other values are returned unchanged.
    """
    if not isinstance(url, str):
        return url
    return redact_text(url)


def redact_secrets(obj: Any, secrets: Sequence[str] = ()) -> Any:
    """Returns ``obj`` (nested dicts / lists of primitives) with every credential hidden.

    Args:
        obj: the container.
        secrets: exact strings (e.g. values read from the environment) to replace by ``***``.
    """
    if isinstance(obj, dict):
        return {k: redact_secrets(v, secrets) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(redact_secrets(v, secrets) for v in obj)
    if isinstance(obj, str):
        return redact_text(obj, secrets)
    return obj


# --- the run directory: never follow a symlink on write ---------------------------------
def redact_text(text: str, secrets: Sequence[str] = ()) -> str:
    """Hides every URL password, credential query parameter and ``secrets`` inside ``text``."""
    out = _USERINFO.sub(lambda m: f"{m['head']}:***@", str(text))
    out = _QUERY.sub(lambda m: f"{m['head']}***", out)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


_ENV_REF = re.compile(r"\$\{oc\.env:(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_SECRET_NAME = re.compile(r"PASS|PWD|SECRET|TOKEN|KEY|CRED|AUTH|STORAGE|STORE|URL|URI|DSN", re.I)


def env_secrets(text: str) -> list[str]:
    """Values of the environment variables a config reads with ``${oc.env:NAME}`` whose
    name suggests a credential or a database address (``*PASSWORD*``, ``*TOKEN*``,
    ``*KEY*``, ``*STORAGE*``, ``*URL*``, ...): written configs hide these values too."""
    names = {m["name"] for m in _ENV_REF.finditer(str(text))}
    return sorted(
        (os.environ[n] for n in names if _SECRET_NAME.search(n) and os.environ.get(n)),
        key=len,
        reverse=True,
    )


def redact_hydra_files() -> None:
    """Rewrites the ``.hydra`` yamls of this job (and ``multirun.yaml``) without credentials.

    Hydra writes them before the job starts; URL passwords, ``password=`` query parameters
    and secret values read with ``${oc.env:...}`` are replaced by ``***`` (atomically; a
    link there is replaced, never followed). The job's own config keeps the real values.
    """
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    files = list((out / str(hc.output_subdir)).glob("*.yaml")) if hc.output_subdir else []
    files += (
        [Path(hc.sweep.dir) / "multirun.yaml"] if hc.mode and "MULTIRUN" in str(hc.mode) else []
    )
    for file in files:
        if not file.is_file() or file.is_symlink():
            continue
        text = file.read_text()
        clean = redact_text(text, env_secrets(text))
        if clean != text:
            tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
            tmp.write_text(clean)
            os.replace(tmp, file)
