"""The case reader: agents read the cases they work on, and only what their card needs."""
