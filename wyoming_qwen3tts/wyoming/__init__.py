"""The Wyoming front end: server (connections, limits, drain), connection, handler (events <-> speech
service), info, audio framing, the wire format, zeroconf discovery and the health check."""
