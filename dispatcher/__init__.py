"""The dispatcher: picks due orders, cuts them into shards of at most 100, enqueues RQ jobs.

Run any number; one is leader (a Redis lock with expiry and a fencing token), the rest wait.
Orders are leased in the database with a per-shard token before their job is enqueued, by a
conditional UPDATE that only takes orders whose lease is free or expired: two dispatchers that
both believe they lead still cannot put an order in two shards. A worker checks only the
orders that still carry its shard's token, and releases them when done; an order whose shard
died is taken again once its lease expires.
"""
