"""The store room: one SQL database for everything factory records.

Jobs (the service's queue), training runs (config, loss curve, outputs) and evaluation runs
(scores) live in the same SQLAlchemy database: a SQLite file by default, PostgreSQL for a team.
It sits below training, evaluation and the service, so each of them records here without
importing the others.
"""
