-- One AssetPay trade callback in ONE round trip: the walk of bench/webhook_delivery.sql (the same deliveries, the
-- same variables, the same duplicates), each delivery a single call of bench_delivery()
-- (bench/webhook_delivery_function.sql), which does the same inserts, locks and updates server-side. bench/webhooks.py
-- runs it with the same pgbench options and -D definitions as the statement-by-statement script; the app's rate
-- is reported as a ratio of this one's.

\if :d > 0 and random(1, 100) <= :dup_pct
-- an exact duplicate of this client's previous delivery: the function stops at the conflicting insert
SELECT bench_delivery('completed', :dkey, :tkey, 0, 0, 0, 0, 0, :raw_body, :items, :trade_view);
\else
\set d :d + 1
\set dkey :client_id * 1000000000 + :d
\if :phase = 0
\set t :t + 1
\set tkey :client_id * 1000000000 + :t
\set uid random(1, :users)
\set steam :steam_base + :uid
\set total random(10, 2000)
\set pre :total * 6 / 10
\set pending :total - :pre
\set phase 1
SELECT bench_delivery('hold', :dkey, :tkey, :uid, :steam, :total, :pre, :pending, :raw_body, :items, :trade_view);
\else
\set phase 0
\if random(1, 100) <= :revert_pct
SELECT bench_delivery('reverted', :dkey, :tkey, :uid, :steam, :total, :pre, :pending, :raw_body, :items, :trade_view);
\else
SELECT bench_delivery('completed', :dkey, :tkey, :uid, :steam, :total, :pre, :pending, :raw_body, :items, :trade_view);
\endif
\endif
\endif
