"""A job's report: its summary and the channels it is sent on."""
