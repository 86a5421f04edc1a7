"""The exit statuses of ``mirrorhook``'s commands, in one place
(docs/design.md#commands-and-exit-statuses)."""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_LOCKED = 75  # EX_TEMPFAIL: cron may simply try again later
