"""The gateway: one URL for every client, routed to any configured upstream."""
