"""The eval runs' store, now in the store room (:mod:`factory.store.evals`); these names stay importable here."""

from factory.store.evals import ENV, SCOPES, ResultsStore, RunInfo, compare, database_url, default_location

__all__ = ["ENV", "SCOPES", "ResultsStore", "RunInfo", "compare", "database_url", "default_location"]
