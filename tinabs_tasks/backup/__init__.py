"""Backup stages: plain functions ``(env, ctx) -> ctx`` (env: backup.table.StageEnv).

Every stage may run more than once (retries, Redis redelivery, a worker killed
mid-stage).  Each docstring says what it creates, how it finds what an
earlier attempt of the same run made (by marker), and how it is undone.  Stages look for an earlier
attempt's work only when ``env.again`` says an earlier delivery started them (the run record
knows): a first delivery has made nothing yet, and the lookups cost XAPI calls.
"""
