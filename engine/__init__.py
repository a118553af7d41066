"""The Bots EDI engine: config, routes, channels, tracking database, runs, reports.

Nothing here imports ``tasks`` or ``ops``: ``bots-engine`` runs without any broker.
"""
