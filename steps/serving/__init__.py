"""Serving the model: KServe's Python model server, and what speaks to it.

    protocol.py  the one V1/V2 codec: paths, bodies, header names, errors (server, client, probe, local target)
    model.py     FashionModel, the `kserve.Model` with its lifecycle (load, start, stop)
    loading.py   a version's SavedModel, loaded and warmed
    batcher.py   one inference thread; waiting requests merged per version
    router.py    production or canary per request; the alias watcher that follows the registry
    server.py    the process side: TensorFlow set-up, socket, body cap, KServe's REST server, stop
    workers.py   `serve --workers N`: N server processes sharing one port
    process.py   a server as a child process (for `up`), stopped by process group
    client.py    PredictionClient and image loading for `predict`
    probe.py     a rollout's probe of a served model over HTTP

Only model.py and server.py import kserve (which parses `sys.argv` on import): import them in the
server process alone.
"""
