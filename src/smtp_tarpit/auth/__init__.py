"""SMTP AUTH support: password hashing and the users file."""
