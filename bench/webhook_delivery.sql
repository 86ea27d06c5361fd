-- One AssetPay trade callback as the app handles it: the statements of services/intake.py (store/deliveries.py),
-- store/trades.py, store/ledger.py and store/events.py, in the same order, one transaction per delivery (the
-- trade's save, its ledger entry and the delivery's outcome are one statement, store/ledger.py's _POST_AND_SAVE). bench/webhooks.py runs it as
--   pgbench -n -M prepared -c 16 -j 2 -T <s> -f bench/webhook_delivery.sql -D users=200 -D dup_pct=10 -D revert_pct=20
--           -D steam_base=76561198100000000 -D d=0 -D t=0 -D phase=0 -D dkey=0 -D tkey=0
--           -D raw_body=<a callback body, ~1.1 kB of JSON> -D items=<its items as the app stores them> <database>
-- and warns when the app's statements no longer match the ones below (keep them in step: see bench/README.md).
-- Prepared mode only: :variables become bind parameters, as with asyncpg's prepared statements, so the raw body
-- and the items travel with every execution and are parsed every time, as the app's are.
--
-- Each pgbench client keeps its variables between transactions and walks its own deposits like a sender of the
-- app benchmark: dup_pct % of transactions resend its previous delivery (the insert conflicts: nothing else
-- happens), the others alternate between "hold" for a new trade (recorded, pre-credited) and "completed" or
-- (revert_pct %) "reverted" for that trade. Amounts are whole dollars; users are bench-user-1..users with Steam ids
-- steam_base + i. What it writes keeps the ledger exact, so the ledger check still passes after it.

\if :d > 0 and random(1, 100) <= :dup_pct
-- an exact duplicate of this client's previous delivery: recorded already, so the app stops here
BEGIN;
INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
VALUES ('pgb-d-' || :dkey, 'trade', 'received', NULL, 'pgb-t-' || :tkey, now(), :raw_body)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING id;
COMMIT;
\else
\set d :d + 1
\set dkey :client_id * 1000000000 + :d
\if :phase = 0
-- hold: the first we hear of the trade (7 round trips)
\set t :t + 1
\set tkey :client_id * 1000000000 + :t
\set uid random(1, :users)
\set steam :steam_base + :uid
\set total random(10, 2000)
\set pre :total * 6 / 10
\set pending :total - :pre
\set phase 1
BEGIN;
INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
VALUES ('pgb-d-' || :dkey, 'trade', 'received', NULL, 'pgb-t-' || :tkey, now(), :raw_body)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING id \gset dlv_
SELECT t.*, owner.id AS owner FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
SELECT id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type, game, status, total_price, pre_credit, pending_credit, authorized_amount, approved_amount, posted, is_instant, error, hold_end_date, needs_review, review_reason, created_at, updated_at, items::text AS items FROM trades
WHERE assetpay_id = 'pgb-t-' || :tkey OR (external_id = 'pgb-x-' || :tkey AND assetpay_id IS NULL)
ORDER BY assetpay_id = 'pgb-t-' || :tkey DESC NULLS LAST
LIMIT 1
FOR UPDATE
) AS t ON true
LEFT JOIN LATERAL (
    SELECT id FROM users WHERE (id = 'bench-user-' || :uid OR steam_id = :steam::text) AND t.id IS NULL
    ORDER BY id = 'bench-user-' || :uid DESC NULLS LAST
    LIMIT 1
) AS owner ON true;
INSERT INTO trades (id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type, game,
                    status, total_price, pre_credit, pending_credit, authorized_amount, approved_amount, posted, items,
                    is_instant, error, hold_end_date)
VALUES (gen_random_uuid(), 'pgb-t-' || :tkey, 'pgb-x-' || :tkey, 'bench-user-' || :uid, :steam::text, 'bench-user-' || :uid, 'deposit', '730', 'hold', :total, :pre, :pending, NULL, NULL, 0, :items::text::jsonb, true, NULL, now() + interval '7 days')
ON CONFLICT DO NOTHING
RETURNING id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type, game, status, total_price, pre_credit, pending_credit, authorized_amount, approved_amount, posted, is_instant, error, hold_end_date, needs_review, review_reason, created_at, updated_at, items::text AS items \gset tr_
WITH saved AS (
    UPDATE trades
    SET assetpay_id = :tr_assetpay_id, user_id = :tr_user_id, client_steam_id = :tr_client_steam_id,
        external_client_user_id = :tr_external_client_user_id, type = :tr_type, game = :tr_game, status = :tr_status,
        total_price = :total, pre_credit = :pre, pending_credit = :pending, authorized_amount = NULL, approved_amount = NULL, posted = :pre, items = :items::text::jsonb, is_instant = true,
        error = NULL, hold_end_date = :tr_hold_end_date, needs_review = false, review_reason = NULL, updated_at = now()
    WHERE id = :tr_id
    RETURNING updated_at
), moved AS (
    UPDATE balances SET available = available + :pre::numeric, updated_at = now()
    WHERE user_id = 'bench-user-' || :uid AND :pre::numeric <> 0
    RETURNING available
), entry AS (
    INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after)
    SELECT 'bench-user-' || :uid, :tr_id, :pre::numeric, 'pre_credit', available FROM moved
    RETURNING balance_after, id, created_at
), told AS (
    UPDATE webhook_deliveries SET outcome = 'created'::text, trade_id = :tr_id WHERE id = :dlv_id::bigint
)
SELECT saved.updated_at, entry.balance_after, entry.id, entry.created_at FROM saved LEFT JOIN entry ON true;
WITH seq AS (
    UPDATE balances SET last_event_id = last_event_id + 2 WHERE user_id = 'bench-user-' || :uid
    RETURNING last_event_id, available
), pending AS (
    SELECT coalesce(sum(total_price - posted), 0) AS amount FROM trades
    WHERE user_id = 'bench-user-' || :uid AND type = 'deposit' AND status = ANY('{initiated,pending,active,hold}'::text[])
), fresh (n, type, data) AS (
    SELECT 1, 'trade.updated', :trade_view::text::jsonb WHERE :trade_view::text IS NOT NULL
    UNION ALL
    SELECT 2, 'balance.updated',
           jsonb_build_object('available', money_text(seq.available), 'pending', money_text(pending.amount))
    FROM seq, pending WHERE true
)
INSERT INTO events (user_id, id, type, data)
SELECT 'bench-user-' || :uid, seq.last_event_id - 2 + fresh.n, fresh.type, fresh.data FROM seq, fresh
RETURNING id, pg_notify('assetpay_events', 'bench-user-' || :uid || ' ' || id);
COMMIT;
\else
-- completed (credit the rest) or reverted (take the pre-credit back) for the trade this client put in hold
-- (6 round trips)
\set phase 0
\if random(1, 100) <= :revert_pct
\set minus_pre 0 - :pre
BEGIN;
INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
VALUES ('pgb-d-' || :dkey, 'trade', 'received', NULL, 'pgb-t-' || :tkey, now(), :raw_body)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING id \gset dlv_
SELECT t.*, owner.id AS owner FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
SELECT id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type, game, status, total_price, pre_credit, pending_credit, authorized_amount, approved_amount, posted, is_instant, error, hold_end_date, needs_review, review_reason, created_at, updated_at, items::text AS items FROM trades
WHERE assetpay_id = 'pgb-t-' || :tkey OR (external_id = 'pgb-x-' || :tkey AND assetpay_id IS NULL)
ORDER BY assetpay_id = 'pgb-t-' || :tkey DESC NULLS LAST
LIMIT 1
FOR UPDATE
) AS t ON true
LEFT JOIN LATERAL (
    SELECT id FROM users WHERE (id = 'bench-user-' || :uid OR steam_id = :steam::text) AND t.id IS NULL
    ORDER BY id = 'bench-user-' || :uid DESC NULLS LAST
    LIMIT 1
) AS owner ON true \gset tr_
WITH saved AS (
    UPDATE trades
    SET assetpay_id = :tr_assetpay_id, user_id = :tr_user_id, client_steam_id = :tr_client_steam_id,
        external_client_user_id = :tr_external_client_user_id, type = :tr_type, game = :tr_game, status = 'reverted',
        total_price = :total, pre_credit = :pre, pending_credit = :pending, authorized_amount = NULL, approved_amount = NULL, posted = 0, items = :items::text::jsonb, is_instant = true,
        error = NULL, hold_end_date = :tr_hold_end_date, needs_review = false, review_reason = NULL, updated_at = now()
    WHERE id = :tr_id
    RETURNING updated_at
), moved AS (
    UPDATE balances SET available = available + :minus_pre::numeric, updated_at = now()
    WHERE user_id = 'bench-user-' || :uid AND :minus_pre::numeric <> 0
    RETURNING available
), entry AS (
    INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after)
    SELECT 'bench-user-' || :uid, :tr_id, :minus_pre::numeric, 'reversal', available FROM moved
    RETURNING balance_after, id, created_at
), told AS (
    UPDATE webhook_deliveries SET outcome = 'advance'::text, trade_id = :tr_id WHERE id = :dlv_id::bigint
)
SELECT saved.updated_at, entry.balance_after, entry.id, entry.created_at FROM saved LEFT JOIN entry ON true;
WITH seq AS (
    UPDATE balances SET last_event_id = last_event_id + 2 WHERE user_id = 'bench-user-' || :uid
    RETURNING last_event_id, available
), pending AS (
    SELECT coalesce(sum(total_price - posted), 0) AS amount FROM trades
    WHERE user_id = 'bench-user-' || :uid AND type = 'deposit' AND status = ANY('{initiated,pending,active,hold}'::text[])
), fresh (n, type, data) AS (
    SELECT 1, 'trade.updated', :trade_view::text::jsonb WHERE :trade_view::text IS NOT NULL
    UNION ALL
    SELECT 2, 'balance.updated',
           jsonb_build_object('available', money_text(seq.available), 'pending', money_text(pending.amount))
    FROM seq, pending WHERE true
)
INSERT INTO events (user_id, id, type, data)
SELECT 'bench-user-' || :uid, seq.last_event_id - 2 + fresh.n, fresh.type, fresh.data FROM seq, fresh
RETURNING id, pg_notify('assetpay_events', 'bench-user-' || :uid || ' ' || id);
COMMIT;
\else
BEGIN;
INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
VALUES ('pgb-d-' || :dkey, 'trade', 'received', NULL, 'pgb-t-' || :tkey, now(), :raw_body)
ON CONFLICT (delivery_id) DO NOTHING
RETURNING id \gset dlv_
SELECT t.*, owner.id AS owner FROM (SELECT 1) AS one
LEFT JOIN LATERAL (
SELECT id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type, game, status, total_price, pre_credit, pending_credit, authorized_amount, approved_amount, posted, is_instant, error, hold_end_date, needs_review, review_reason, created_at, updated_at, items::text AS items FROM trades
WHERE assetpay_id = 'pgb-t-' || :tkey OR (external_id = 'pgb-x-' || :tkey AND assetpay_id IS NULL)
ORDER BY assetpay_id = 'pgb-t-' || :tkey DESC NULLS LAST
LIMIT 1
FOR UPDATE
) AS t ON true
LEFT JOIN LATERAL (
    SELECT id FROM users WHERE (id = 'bench-user-' || :uid OR steam_id = :steam::text) AND t.id IS NULL
    ORDER BY id = 'bench-user-' || :uid DESC NULLS LAST
    LIMIT 1
) AS owner ON true \gset tr_
WITH saved AS (
    UPDATE trades
    SET assetpay_id = :tr_assetpay_id, user_id = :tr_user_id, client_steam_id = :tr_client_steam_id,
        external_client_user_id = :tr_external_client_user_id, type = :tr_type, game = :tr_game, status = 'completed',
        total_price = :total, pre_credit = :pre, pending_credit = :pending, authorized_amount = NULL, approved_amount = NULL, posted = :total, items = :items::text::jsonb, is_instant = true,
        error = NULL, hold_end_date = :tr_hold_end_date, needs_review = false, review_reason = NULL, updated_at = now()
    WHERE id = :tr_id
    RETURNING updated_at
), moved AS (
    UPDATE balances SET available = available + :pending::numeric, updated_at = now()
    WHERE user_id = 'bench-user-' || :uid AND :pending::numeric <> 0
    RETURNING available
), entry AS (
    INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after)
    SELECT 'bench-user-' || :uid, :tr_id, :pending::numeric, 'credit', available FROM moved
    RETURNING balance_after, id, created_at
), told AS (
    UPDATE webhook_deliveries SET outcome = 'advance'::text, trade_id = :tr_id WHERE id = :dlv_id::bigint
)
SELECT saved.updated_at, entry.balance_after, entry.id, entry.created_at FROM saved LEFT JOIN entry ON true;
WITH seq AS (
    UPDATE balances SET last_event_id = last_event_id + 2 WHERE user_id = 'bench-user-' || :uid
    RETURNING last_event_id, available
), pending AS (
    SELECT coalesce(sum(total_price - posted), 0) AS amount FROM trades
    WHERE user_id = 'bench-user-' || :uid AND type = 'deposit' AND status = ANY('{initiated,pending,active,hold}'::text[])
), fresh (n, type, data) AS (
    SELECT 1, 'trade.updated', :trade_view::text::jsonb WHERE :trade_view::text IS NOT NULL
    UNION ALL
    SELECT 2, 'balance.updated',
           jsonb_build_object('available', money_text(seq.available), 'pending', money_text(pending.amount))
    FROM seq, pending WHERE true
)
INSERT INTO events (user_id, id, type, data)
SELECT 'bench-user-' || :uid, seq.last_event_id - 2 + fresh.n, fresh.type, fresh.data FROM seq, fresh
RETURNING id, pg_notify('assetpay_events', 'bench-user-' || :uid || ' ' || id);
COMMIT;
\endif
\endif
\endif
