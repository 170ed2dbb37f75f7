"""The e2e boots share the Raspberry Pi OS stand-in with the integration tests (built once per
machine, served on 127.0.0.1)."""

from tests.integration.conftest import raspios_standin_source

__all__ = ["raspios_standin_source"]
