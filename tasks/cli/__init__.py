"""The queue's commands: ``bots-job2queue`` (:mod:`~tasks.cli.job2queue`), ``bots-jobqueueserver``
(:mod:`~tasks.cli.jobqueueserver`) and ``botsq queue`` (:mod:`~tasks.cli.queue`)."""
