"""The scheduler service: one owner for each piece of state (``JobBook`` the jobs,
``NodeRegistry`` the nodes, ``scheduler.store`` what is durable), a thin ``api`` with one method
per RPC, and ``scheduler.grpc`` as the adapter over it."""
