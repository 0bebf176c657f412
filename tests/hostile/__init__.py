"""Hostile input: attacks on the SMTP core and the running server, and the limits that must hold."""
