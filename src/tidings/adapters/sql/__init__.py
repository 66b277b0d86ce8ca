"""What the SQL adapters (SQLite, PostgreSQL) share: append planning, row mapping, chain checks."""
