"""The scheduler: jobs and queues, actions and policies over snapshots, store, service, replay."""
