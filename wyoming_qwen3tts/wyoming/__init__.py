"""The Wyoming front end: the TCP server, one handler per connection, info, the wire format, zeroconf
and the health check."""
