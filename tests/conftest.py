import os

from hypothesis import HealthCheck, settings

# CI runs at least 10 000 fuzz examples in total across the property tests;
# local runs stay quick unless HYPOTHESIS_PROFILE=ci is set.
settings.register_profile(
    "ci", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def valkey():
    """One real valkey-server for the session; tests take a fresh database each."""
    from tests.valkey_server import ValkeyServer

    server = ValkeyServer().start()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "redis"])
def relay_store(request: pytest.FixtureRequest):
    """Run an integration test once per store: SQLite (default) and shared Valkey."""
    from tests import support

    if request.param == "redis":
        support.DEFAULT_STORE["url"] = request.getfixturevalue("valkey").fresh_db_url()
    try:
        yield request.param
    finally:
        support.DEFAULT_STORE["url"] = ""
