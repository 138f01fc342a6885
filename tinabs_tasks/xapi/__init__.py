"""The XAPI port: sessions, typed calls, HTTP streaming, error classification."""
