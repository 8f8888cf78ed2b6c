"""Revision scripts, oldest first; a new one must also be appended to ``migrations.REVISIONS``."""
