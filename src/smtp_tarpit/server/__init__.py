"""The asyncio layer: listeners, per-connection session glue, the executor, the runtime built from config."""
