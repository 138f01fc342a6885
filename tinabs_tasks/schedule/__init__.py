"""When beat starts what: schedule times and beat's scheduler."""
