"""The CAS as a running service: service layer, HTTP API, signed requests, composition root."""
