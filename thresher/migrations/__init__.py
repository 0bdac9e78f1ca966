"""Alembic migrations for the thresher store; `thresher.store.Store.migrate` runs them in order."""
