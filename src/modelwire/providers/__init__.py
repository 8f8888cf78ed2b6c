"""Providers: transport, retries, auth and host quirks on top of the dialects."""
