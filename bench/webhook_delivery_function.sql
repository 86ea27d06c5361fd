-- The work of one AssetPay trade callback in ONE round trip: the writes of bench/webhook_delivery.sql (the app's:
-- record the delivery, lock the trade, find the user, record the trade, post the ledger entry with the cached
-- balance, save the trade, append the outbox events with their NOTIFY, set the delivery's outcome) run by a
-- PL/pgSQL function that pgbench calls once per delivery
-- (bench/webhook_delivery_1rt.sql). Its ids (pg1-...) are its own, so it can follow the statement-by-statement run
-- on the same database. It is what the same database work costs with no round trips in between: the
-- floor the app's rate is compared with. bench/webhooks.py creates it in the scratch database only.
--
-- p_kind: 'hold' (a new trade, pre-credited), 'completed' (credit the rest) or 'reverted' (take the pre-credit back).
-- A delivery id seen before (a duplicate) stops after the first insert, as in the app.
CREATE OR REPLACE FUNCTION bench_delivery(
    p_kind text, dkey bigint, tkey bigint, uid integer, steam bigint, p_total numeric, p_pre numeric,
    p_pending numeric, p_raw_body text, p_items text, trade_view text
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    delivery_row bigint;
    trade_row trades%ROWTYPE;
    user_name text := 'bench-user-' || uid;
    found_user text;
    delta numeric;
    entry_kind text;
    new_posted numeric;
    saved_at timestamptz;
    balance numeric;
    notified bigint;
BEGIN
    INSERT INTO webhook_deliveries (delivery_id, kind, outcome, detail, subject_id, signed_at, raw_body)
    VALUES ('pg1-d-' || dkey, 'trade', 'received', NULL, 'pg1-t-' || tkey, now(), p_raw_body)
    ON CONFLICT (delivery_id) DO NOTHING
    RETURNING id INTO delivery_row;
    IF delivery_row IS NULL THEN
        RETURN 'duplicate';
    END IF;

    SELECT * INTO trade_row FROM trades
    WHERE assetpay_id = 'pg1-t-' || tkey OR (external_id = 'pg1-x-' || tkey AND assetpay_id IS NULL)
    ORDER BY assetpay_id = 'pg1-t-' || tkey DESC NULLS LAST
    LIMIT 1
    FOR UPDATE;

    IF p_kind = 'hold' THEN
        SELECT id INTO found_user FROM users WHERE id = user_name OR steam_id = steam::text
        ORDER BY id = user_name DESC NULLS LAST
        LIMIT 1;
        INSERT INTO trades (id, assetpay_id, external_id, user_id, client_steam_id, external_client_user_id, type,
                            game, status, total_price, pre_credit, pending_credit, authorized_amount, approved_amount,
                            posted, items, is_instant, error, hold_end_date)
        VALUES (gen_random_uuid(), 'pg1-t-' || tkey, 'pg1-x-' || tkey, found_user, steam::text, user_name, 'deposit',
                '730', 'hold', p_total, p_pre, p_pending, NULL, NULL, 0, p_items::jsonb, true, NULL, now() + interval '7 days')
        ON CONFLICT DO NOTHING
        RETURNING * INTO trade_row;
        delta := p_pre;
        entry_kind := 'pre_credit';
        new_posted := p_pre;
    ELSIF p_kind = 'reverted' THEN
        delta := -p_pre;
        entry_kind := 'reversal';
        new_posted := 0;
    ELSE
        delta := p_pending;
        entry_kind := 'credit';
        new_posted := p_total;
    END IF;

    WITH moved AS (
        UPDATE balances SET available = available + delta, updated_at = now() WHERE user_id = user_name
        RETURNING available
    )
    INSERT INTO ledger_entries (user_id, trade_id, amount, kind, balance_after)
    SELECT user_name, trade_row.id, delta, entry_kind, available FROM moved
    RETURNING balance_after INTO balance;

    UPDATE trades
    SET assetpay_id = trade_row.assetpay_id, user_id = trade_row.user_id, client_steam_id = trade_row.client_steam_id,
        external_client_user_id = trade_row.external_client_user_id, type = trade_row.type, game = trade_row.game,
        status = p_kind, total_price = p_total, pre_credit = p_pre, pending_credit = p_pending, authorized_amount = NULL,
        approved_amount = NULL, posted = new_posted, items = p_items::jsonb, is_instant = true, error = NULL,
        hold_end_date = trade_row.hold_end_date, needs_review = false, review_reason = NULL, updated_at = now()
    WHERE id = trade_row.id
    RETURNING updated_at INTO saved_at;

    WITH seq AS (
        UPDATE balances SET last_event_id = last_event_id + 2 WHERE user_id = user_name
        RETURNING last_event_id, available
    ), in_flight AS (
        SELECT coalesce(sum(total_price - posted), 0) AS amount FROM trades
        WHERE user_id = user_name AND type = 'deposit' AND status = ANY('{initiated,pending,active,hold}'::text[])
    ), fresh (n, type, data) AS (
        SELECT 1, 'trade.updated', trade_view::jsonb
        UNION ALL
        SELECT 2, 'balance.updated',
               jsonb_build_object('available', money_text(seq.available), 'pending', money_text(in_flight.amount))
        FROM seq, in_flight
    ), appended AS (
        INSERT INTO events (user_id, id, type, data)
        SELECT user_name, seq.last_event_id - 2 + fresh.n, fresh.type, fresh.data FROM seq, fresh
        RETURNING id
    )
    SELECT count(pg_notify('assetpay_events', user_name || ' ' || id)) INTO notified FROM appended;

    UPDATE webhook_deliveries SET outcome = CASE WHEN p_kind = 'hold' THEN 'created' ELSE 'advance' END,
        trade_id = trade_row.id
    WHERE id = delivery_row;
    RETURN p_kind;
END
$$;
