"""Event families. Every type here is listed in `contracts.catalog.CATALOG`."""
