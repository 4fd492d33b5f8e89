"""The scheduler service: one owner for each piece of state.

* ``api``: ``SchedulerApi``, one method per RPC (checks and delegation only);
* ``jobs``: ``JobBook``, the only owner of job state (the store's mirror, parsed documents,
  queue positions, live pending reasons, task reports);
* ``nodes``: ``NodeRegistry``, the only owner of nodes, heartbeats and readiness;
* ``restarts``: the restart policy as a pure function; ``liveness``: the timer that applies it;
* ``loop``: the scheduling loop; ``admission``: job documents in, the core's verdicts cached;
* ``core_link``: the one link to the scheduler core (in this process or a child process);
* ``assignments``: each node's starts and stops, pushed to its agent's stream;
* ``metrics``, ``tuning`` (GC), ``auth`` (roles and calls).

The durable store is ``scheduler.store``; the gRPC adapter is ``scheduler.grpc``.
"""
