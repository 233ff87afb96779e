"""The key directory's contract (tests/unit/key_directory_suite.py) on the sources
that need no broker: principals loaded as given (a test's, or what an auditor has
decoded), and principals that went through JSON as an exported audit bundle carries
them. The registry's answer over NATS: tests/integration/test_key_directory_registry.py."""

from __future__ import annotations

import msgspec
import pytest

from contracts.registry_api import PrincipalKeys
from mesh._trust.key_directory import KeyDirectory
from tests.unit.key_directory_suite import DirectoryOf, KeyDirectorySourceSuite


class TestLoadedFromPrincipals(KeyDirectorySourceSuite):
    @pytest.fixture
    def directory_of(self) -> DirectoryOf:
        async def loaded(principals: list[PrincipalKeys], registry_sequence: int) -> KeyDirectory:
            keys = KeyDirectory()
            keys.load(principals, registry_sequence)
            return keys

        return loaded


class TestLoadedFromJson(KeyDirectorySourceSuite):
    """As `mesh audit verify --bundle` gets them: written out as JSON, read back."""

    @pytest.fixture
    def directory_of(self) -> DirectoryOf:
        async def decoded(principals: list[PrincipalKeys], registry_sequence: int) -> KeyDirectory:
            exported = msgspec.json.encode(principals)
            keys = KeyDirectory()
            keys.load(msgspec.json.decode(exported, type=list[PrincipalKeys]), registry_sequence)
            return keys

        return decoded
