"""What starts a run: one family, each member on both paths (the embedded platform and the cluster).

| member | local (`up`) | cluster |
| --- | --- | --- |
| webhook | `webhook.WebhookServer` | `webhook_sensor`: EventBus, webhook EventSource, Sensor |
| drops | `drops.DropWatcher` | `drop_sensor`: minio EventSource and Sensor; `drop_reconcile`: CronWorkflow |
| schedule | `schedule.Scheduler` | `schedule`: the nightly CronWorkflow |

What they share is in `base`: the write-once event log in the store (the write is the dedup, so an
event starts one run across restarts), event -> workflow arguments, the Sensor skeleton, and the
`LocalTrigger` protocol that `up` starts, requeues and stops (workflows/platform.py). `payload` is
the retrain contract the webhook checks and drops extend. A new trigger is one module here (its local
half a `LocalTrigger`, its cluster half manifests), one line in `up` (workflows/cli/platform.py) and
one entry in `render.GENERATED`.
"""
