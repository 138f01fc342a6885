"""The XAPI simulator: a XenServer / XCP-ng pool over HTTP, for tests and demos.

See ``faults`` for the fault spec and ``control`` for the control API.
"""
