"""The SQLite store: connections, the schema and its migrations, the audit log, the model registry
and the background jobs that write into it. Imports nothing else of rocore."""
