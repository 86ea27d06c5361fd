from sqlalchemy import text

from assetpay_merchant.store.migrations import head_revision
from tests.support import deliver_trade, register_user, trade


async def test_healthz(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_the_migration_head(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["migration"] == head_revision()


async def test_readyz_is_503_when_migrations_are_behind(client, engine):
    async with engine.begin() as connection:
        await connection.execute(text("UPDATE alembic_version SET version_num = 'behind'"))
    try:
        response = await client.get("/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["key"] == "MIGRATIONS_PENDING"
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head_revision()})


async def test_metrics_count_webhook_deliveries(client):
    steam = await register_user(client, "metrics")
    await deliver_trade(client, trade(status="hold", user_id="metrics", steam_id=steam))
    body = (await client.get("/metrics")).text
    assert 'assetpay_webhook_deliveries_total{kind="trade",outcome="created"}' in body
    assert 'ledger_postings_total{kind="pre_credit"}' in body


async def test_unknown_route_has_the_error_shape(client):
    response = await client.get("/v1/nowhere")
    assert response.status_code == 404
    assert response.json()["error"]["key"] == "NOT_FOUND"
