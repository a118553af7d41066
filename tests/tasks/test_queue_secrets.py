"""A ``${VAR}`` value is a secret wherever it is used: a token in a ``[jobqueue.commands]`` line (and
passed along as a job argument) appears in no log, job record, botsq output or task event (what
Flower and ``celery events`` show). Real RabbitMQ, real job2queue, worker and botsq processes; main
wrote the token into jobqueue.log and the events."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from kombu import Connection, Exchange, Queue
from sqlalchemy import select

from engine.db import session_scope
from queue_helpers import Worker, botsq, in_process, job2queue, jobqueue_log, make_queue_env, purge, wait_for
from tasks.registry import StartedJob


@pytest.mark.rabbitmq
@pytest.mark.procs
def test_a_var_value_never_shows(own_vhost: str, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("ERP_TOKEN", token)          # the children get it too (proc_env copies os.environ)
    env = make_queue_env(tmp_path / "env", own_vhost,
                         commands="erp_export = /bin/echo exporting --token ${ERP_TOKEN}\n")
    purge(env, own_vhost)
    cfg = in_process(env, own_vhost)
    with Connection(own_vhost) as conn:
        # what Flower and `celery events` read: the task events on exchange celeryev
        spy = Queue(f"spy-{uuid.uuid4().hex[:8]}", Exchange("celeryev", type="topic"), routing_key="task.#",
                    auto_delete=True, durable=False)
        spy.maybe_bind(conn)
        spy.declare()
        seen: list[dict] = []

        def drain() -> list[dict]:
            while (msg := spy.get(no_ack=True)) is not None:
                body = msg.decode()
                seen.extend(body if isinstance(body, list) else [body])     # a worker sends events in groups
            return seen

        # a caller passes the token along as an argument too (a script holding $ERP_TOKEN)
        r = job2queue(env, own_vhost, "erp_export", "--check", os.environ["ERP_TOKEN"])
        assert r.returncode == 0, r.stderr
        assert token not in r.stdout + r.stderr
        waiting = botsq(env, own_vhost, "queue", "--json")
        assert waiting.returncode == 0, waiting.stderr
        [job] = json.loads(waiting.stdout)["waiting"]
        assert job["job"] == "erp_export --check ***" and job["kwargs"]["args"] == ["--check", "***"]
        assert token not in waiting.stdout
        wait_for(lambda: any(e.get("type") == "task-sent" for e in drain()), 10, "the task-sent event")

        w = Worker(env, own_vhost).wait_ready()
        try:
            wait_for(lambda: "erp_export: exit status 0" in jobqueue_log(env) or "finished" in jobqueue_log(env),
                     30, "the job to run", w)
            wait_for(lambda: any(e.get("type") == "task-succeeded" for e in drain()), 10, "the task events", w)
            status = botsq(env, own_vhost, "status", "--json")
        finally:
            w.stop()

    log = jobqueue_log(env)
    assert "exporting --token *** --check ***" in log          # the command's own output line, too
    assert token not in log and token not in w.output()
    assert token not in status.stdout + status.stderr
    with session_scope(cfg.database_url) as s:
        records = [(r.job, r.result) for r in s.scalars(select(StartedJob))]
    assert records and all(token not in f"{job} {result}" for job, result in records)
    kinds = {e.get("type") for e in seen}
    assert {"task-sent", "task-received", "task-succeeded"} <= kinds
    shown = json.dumps(seen)
    assert token not in shown and "'***'" in shown
