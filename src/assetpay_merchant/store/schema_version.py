"""The migration this code expects the database to be at (what `/readyz` checks).

A constant rather than a read of the migrations directory: loading Alembic costs every serving process ~9 MB.
A test holds it equal to Alembic's head, so a new migration cannot be forgotten here.
"""

HEAD_REVISION = "0006"
