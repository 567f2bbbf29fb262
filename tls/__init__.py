"""Certificates: store, SNI selection, reload, self-signed fallback, ACME."""
