"""The single-node demo and the stand-in SMTP and HTTP servers it runs."""
