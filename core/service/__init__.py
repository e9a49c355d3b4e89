"""The service room: the HTTP API (routes, keys, limits) and the evaluation jobs behind it.

It sits above inference and evaluation: it imports them, they never import it.
"""
