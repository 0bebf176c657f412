"""The sans-IO SMTP server core: bytes in, events out, typed replies to bytes. Imports no asyncio."""

from smtp_tarpit.protocol.connection import Features, Limits, LocalProtocolError, SmtpConnection
from smtp_tarpit.protocol.events import NEED_DATA

__all__ = ["NEED_DATA", "Features", "Limits", "LocalProtocolError", "SmtpConnection"]
