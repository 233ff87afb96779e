"""One mesh for the adversarial suite: the whole stack as processes (`running_stack`),
up once for the package. Attacks never interfere: each works in its own cases (fresh
external references) and enrols its own principals."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from services.stack.stack import running_stack
from tests.security.kit import Mesh


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_stack(tmp_path_factory.mktemp("security") / "mesh") as stack:
        attacked = Mesh(stack)
        try:
            yield attacked
        finally:
            await attacked.close()
