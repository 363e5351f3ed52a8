"""Start-up checks that keep a node from exposing what it should not.

The REST bridge can write every room's variables, so it may listen beyond
loopback only behind a bearer token; the token may come from a file (a
compose or Kubernetes secret) so it never has to sit in a command line or an
environment listing. The supervisor refuses to start otherwise, with the fix
in the error message. CORS origins are checked here too, so a typo is a
start-up error rather than a silently refused browser.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from relay.config import ConfigError, RelayConfig

__all__ = ["cors_origins", "is_loopback", "secure_config"]

# A token shorter than this is guessable by anyone who can reach the port.
MIN_TOKEN_CHARS = 16


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname may resolve anywhere


def cors_origins(config: RelayConfig) -> list[str]:
    """The configured CORS origins; ``["*"]`` means any origin."""
    # Browsers send an origin without a trailing slash; a copied URL has one.
    return [o.strip().rstrip("/") or "*" for o in config.rest_cors_origins.split(",") if o.strip()]


def _read_token_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"rest_token_file {path}: cannot read: {exc}"]) from exc
    if not token:
        raise ConfigError([f"rest_token_file {path}: the file is empty"])
    return token


def secure_config(config: RelayConfig) -> RelayConfig:
    """Resolve the REST token and refuse unsafe exposure; raises ConfigError.

    Returns the config with ``rest_token`` filled from ``rest_token_file``
    when only the file is given.
    """
    errors: list[str] = []
    token = config.rest_token
    if not token and config.rest_token_file:
        token = _read_token_file(config.rest_token_file)
        config = dataclasses.replace(config, rest_token=token)
    if not is_loopback(config.rest_host) and not token:
        errors.append(
            f"rest_host {config.rest_host!r} is reachable beyond this machine, so the REST bridge "
            "needs a bearer token: set --rest-token / RELAY_REST_TOKEN or --rest-token-file / "
            "RELAY_REST_TOKEN_FILE, or keep --rest-host 127.0.0.1"
        )
    elif token and not is_loopback(config.rest_host) and len(token) < MIN_TOKEN_CHARS:
        errors.append(
            f"the REST token must have at least {MIN_TOKEN_CHARS} characters when rest_host "
            f"{config.rest_host!r} is reachable beyond this machine"
        )
    for origin in cors_origins(config):
        if origin != "*" and not origin.startswith(("http://", "https://")):
            errors.append(
                f"rest_cors_origins: {origin!r} is not an origin (http(s)://host[:port], or '*')"
            )
    if errors:
        raise ConfigError(errors)
    return config
