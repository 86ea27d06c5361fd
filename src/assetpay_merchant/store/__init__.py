"""Storage: the tables, the unit of work that owns each transaction, and the repositories that run SQL in it.

Repositories never begin, commit or roll back: the unit of work does, once per request or job.
"""
