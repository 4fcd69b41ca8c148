"""ZeroMQ transport: the wire protocol, publisher, subscriber, control server and client, CURVE security."""
