"""Recipient directory: which addresses are ours and which mailbox each goes to."""
