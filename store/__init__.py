"""The durable store (SQLAlchemy 2): SQLite embedded, PostgreSQL in production.

Jobs and audit runs live here, not only in the broker, so a job is never lost
silently: the API records it before queueing, the worker records each
transition, and a failure is stored with its reason. Records hold hashes,
redacted text and scores; raw text only when the policy opts in
(``store_raw_text``).

``db`` holds engines and migrations, ``models`` the ORM tables, ``jobs`` and
``audits`` the repositories. Repositories take plain arguments or contracts and
return frozen values (``records``, or ``evaluators.contracts`` types), so no ORM
object leaves this package.
"""
