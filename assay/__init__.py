"""The Python client of Assay's HTTP API: ``from assay.client import Client, AsyncClient``.

It depends on httpx, pydantic and Assay's typed contracts (``evaluators.contracts``)
only: never on the service, the workers or the store.
"""
