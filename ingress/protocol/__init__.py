"""Pure protocol code: codecs and rules over bytes, no sockets, no asyncio, no clock."""
