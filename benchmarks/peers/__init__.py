"""Helpers that run other replicated stores for benchmarks/compare.py.

* ``common``  -- process bookkeeping (start, stop by pid, CPU from /proc),
  latency statistics and the asyncio closed-loop load generator.
* ``etcd``    -- a 3-member etcd cluster on 127.0.0.1 and a tiny keep-alive
  HTTP/1.1 client for etcd's JSON gateway (/v3/kv/put, /v3/kv/range).
* ``pso_node`` -- a PySyncObj ``ReplDict`` node (run as a script, one process
  per node) with a control port; the load generator runs inside the leader.
* ``setup``   -- installs etcd from Debian (``apt-get``) when possible.
"""
