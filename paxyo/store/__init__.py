"""SQL persistence: schema, engine, migrations.

Concurrency rule for everything that touches money: lock the order row (if any) first, then
the account row, then write ledger entry, balance and outbox event in the same transaction.
Every event therefore gets its outbox id while its user's account row is locked, which makes
event ids increase per user in commit order.
"""
