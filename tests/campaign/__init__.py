"""The seeded fault campaign: ``python -m tests.campaign --runs N [--seed S] [--database D]``.

Each run starts the real processes (a Redis of its own with an fsynced append-only file, the
provider simulator, a dispatcher, two workers, two gateways) on a fresh database, drives them
with a seeded scenario (users, deposits, orders and their provider outcomes, WebSocket
clients) while it kills and restarts processes, Redis and database backends at random moments,
then stops the faults, waits for every order to settle and checks the invariants of design.md.

- :mod:`tests.campaign.scenario`: the seeded plan of one run (pure: no I/O).
- :mod:`tests.campaign.processes`: the run's processes and its Redis.
- :mod:`tests.campaign.databases`: the run's fresh database, its backends killed, read back.
- :mod:`tests.campaign.faults`: carrying out the plan's faults against those processes.
- :mod:`tests.campaign.clients`: HTTP calls that survive faults; WebSocket clients that resume.
- :mod:`tests.campaign.invariants`: the checks, as pure functions of what was recorded.
- :mod:`tests.campaign.run`: one run, start to verdict; ``__main__``: the command line.
"""
