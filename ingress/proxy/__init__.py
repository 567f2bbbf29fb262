"""The listener modes' asyncio Protocol shells (HTTP, TCP relay) and what they share."""
