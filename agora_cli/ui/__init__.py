"""Consumers of engine events: the rich live view, the plain one-line-per-step printer, `status`."""
