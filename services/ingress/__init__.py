"""Where other systems open cases: a NATS request subject and an HTTP endpoint."""
