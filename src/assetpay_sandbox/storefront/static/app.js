/**
 * AssetPay demo storefront: a reference integration of the merchant backend's public API, in plain JavaScript.
 *
 * The patterns to copy:
 *  - every call carries the user's JWT: `Authorization: Bearer <token>`                          (api)
 *  - money is a decimal string end to end; what is added up and shown is exact integer arithmetic (Money)
 *  - deposits and withdrawals send an Idempotency-Key: one per click, reused by that click's retries (startTrade)
 *  - live updates over WS /v1/ws, resumed with ?since=<last event id>, views refetched on "resync"  (live*)
 *  - errors are {"error": {"key", "message", "fields"}}: tell the user what the key means           (showError)
 *  - API data is put on the page with textContent, never innerHTML (item names are user-controlled)  (h)
 *
 * Two parts are NOT for production: signing in (your platform registers the user and mints the JWT on its servers;
 * here POST /demo/api/session plays it), and the "sandbox" controls, which only the simulator has.
 */

const API = ""; // the backend's origin; the demo is served by it. In production e.g. "https://api.example.com"
const PLATFORM_SESSION = "/demo/api/session"; // DEMO ONLY: your platform's sign-in, not the backend's
const SANDBOX = "/sandbox/_sandbox"; // SANDBOX ONLY: the simulator's control routes
const FINAL = new Set(["completed", "failed", "canceled", "declined", "reverted"]);
const GAME_NAMES = { 730: "CS2", 252490: "Rust" };
const RUST = "252490";

// -- Money: exact decimal strings ------------------------------------------------------------------------------
//
// The API sends money as decimal strings ("60.00"; sub-cent amounts keep their digits: "0.035") and accepts them
// back. Never parseFloat an amount you add up or show: 0.1 + 0.2 is 0.30000000000000004 in floating point. Here an
// amount is a BigInt count of 10^-8 (the backend stores NUMERIC(24, 8)), added and compared exactly, and formatted
// back into a string. Amounts sent to the API are the strings it gave us, untouched.

const Money = {
  SCALE: 8,
  UNIT: 10n ** 8n,

  /** "12.3" → 1230000000n */
  parse(text) {
    const match = /^(-?)(\d+)(?:\.(\d{1,8}))?$/.exec(String(text));
    if (!match) throw new Error(`not a decimal amount: ${text}`);
    const [, sign, whole, fraction = ""] = match;
    const units = BigInt(whole) * Money.UNIT + BigInt(fraction.padEnd(Money.SCALE, "0"));
    return sign ? -units : units;
  },

  /** 1230000000n → "12.30": at least two decimals, more only when they are not zero (as the backend writes). */
  format(units) {
    const negative = units < 0n;
    const size = negative ? -units : units;
    const fraction = (size % Money.UNIT).toString().padStart(Money.SCALE, "0").replace(/0+$/, "").padEnd(2, "0");
    return `${negative ? "-" : ""}${size / Money.UNIT}.${fraction}`;
  },

  /** For people: "$1,234.50", "−$5.00". Takes a decimal string or units. */
  show(amount) {
    const units = typeof amount === "bigint" ? amount : Money.parse(amount);
    const [whole, fraction] = Money.format(units < 0n ? -units : units).split(".");
    return `${units < 0n ? "−" : ""}$${whole.replace(/\B(?=(\d{3})+$)/g, ",")}.${fraction}`;
  },

  sum(amounts) {
    return amounts.reduce((total, units) => total + units, 0n);
  },

  min(a, b) {
    return a < b ? a : b;
  },
};

// -- State -----------------------------------------------------------------------------------------------------

const state = {
  signIn: null, // what the platform was asked for (to renew the JWT)
  session: null, // {userId, steamId, token, expiresAt} from the platform
  balance: null,
  balanceVersion: 0, // counts live balance updates: a fetch that started before one must not overwrite it
  inventory: { game: "730", items: [], collateral: "0.00" },
  selected: new Set(), // inventory item ids
  trades: new Map(), // our trade id → {trade, timeline: [{status, at}]}
  market: { page: 1, count: 0, perPage: 10 },
  ledger: { entries: [], nextCursor: null },
};

// -- The API ---------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, key, message, { fields = null, retryAfter = null, tradeId = null } = {}) {
    super(message);
    this.status = status; // 0: the request never got an answer
    this.key = key;
    this.fields = fields;
    this.retryAfter = retryAfter;
    this.tradeId = tradeId;
  }
}

async function errorOf(response) {
  const body = await response.json().catch(() => null);
  const error = body?.error ?? {};
  return new ApiError(response.status, error.key ?? `HTTP_${response.status}`, error.message ?? response.statusText, {
    fields: error.fields ?? null,
    retryAfter: response.headers.get("Retry-After"),
    tradeId: error.tradeId ?? null,
  });
}

/** One call to the backend as the signed-in user. Resolves to the JSON answer; rejects with an ApiError. */
async function api(path, { method = "GET", query = {}, body, headers = {}, renewed = false } = {}) {
  const url = new URL(API + path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, String(value));
  }
  const init = { method, headers: { Authorization: `Bearer ${state.session.token}`, ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body); // money in `body` is already decimal strings
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch {
    throw new ApiError(0, "NETWORK_ERROR", "The backend could not be reached");
  }
  if (response.status === 401 && !renewed) {
    // TOKEN_EXPIRED (or revoked): get a fresh JWT from the platform and try once more.
    await renewSession();
    return api(path, { method, query, body, headers, renewed: true });
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

const RETRY_WITH_SAME_KEY = new Set(["NETWORK_ERROR", "OUTCOME_UNKNOWN", "UPSTREAM_TIMEOUT", "IDEMPOTENCY_KEY_IN_USE"]);

/**
 * Start a deposit or a withdrawal. The Idempotency-Key is made once per user action and sent again by every
 * retry of it: when an answer is lost (no answer, 502 OUTCOME_UNKNOWN, 504 UPSTREAM_TIMEOUT) the trade may exist
 * already, and a retry with the same key carries on with it instead of starting a second one. A new click is a
 * new key.
 */
async function startTrade(path, body) {
  const key = newIdempotencyKey();
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await api(path, { method: "POST", body, headers: { "Idempotency-Key": key } });
    } catch (error) {
      if (!(error instanceof ApiError) || !RETRY_WITH_SAME_KEY.has(error.key) || attempt === 3) throw error;
      const seconds = Number(error.retryAfter) || attempt;
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    }
  }
}

function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts (https, localhost)
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // elsewhere: the same thing by hand
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// -- Signing in: DEMO ONLY (your platform's job) ---------------------------------------------------------------
//
// In production the user signs in to YOUR platform, which registers them with the backend (PUT /v1/users/{id},
// X-Admin-Key, clientData from your records) and hands the page a JWT. Neither the admin key nor clientData ever
// comes near a browser. The demo lets you pick the clientData to see how it moves the instant credit.

const PRESETS = {
  alice: { totalWager: "0", kycLevel: 0, fiatDeposits: false, cryptoDeposits: false, verificationLevel: 0 },
  bob: { totalWager: "1250.50", kycLevel: 1, fiatDeposits: true, cryptoDeposits: false, verificationLevel: 0 },
  carol: { totalWager: "250000", kycLevel: 3, fiatDeposits: true, cryptoDeposits: true, verificationLevel: 1 },
};

async function platformSession(request) {
  let response;
  try {
    response = await fetch(PLATFORM_SESSION, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
    });
  } catch {
    throw new ApiError(0, "NETWORK_ERROR", "The platform could not be reached");
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

async function renewSession() {
  state.session = await platformSession(state.signIn);
}

function fillPreset(name) {
  const preset = PRESETS[name];
  $("#user-id").value = name;
  $("#total-wager").value = preset.totalWager;
  $("#kyc-level").value = String(preset.kycLevel);
  $("#fiat-deposits").checked = preset.fiatDeposits;
  $("#crypto-deposits").checked = preset.cryptoDeposits;
  $("#verification-level").value = String(preset.verificationLevel);
}

async function signIn(event) {
  event.preventDefault();
  const clientData = {
    fiatDeposits: $("#fiat-deposits").checked,
    cryptoDeposits: $("#crypto-deposits").checked,
  };
  const wager = $("#total-wager").value.trim();
  if (wager) clientData.totalWager = wager; // a decimal string, as typed: never through a float
  const kyc = $("#kyc-level").value.trim();
  if (kyc) clientData.kycLevel = Number.parseInt(kyc, 10); // a count, not money
  const request = {
    userId: $("#user-id").value.trim(),
    clientData,
    verificationLevel: Number($("#verification-level").value),
  };
  await busy($("#sign-in"), async () => {
    const session = await platformSession(request);
    state.signIn = request;
    startSession(session);
    showInfo(`Signed in as ${session.userId}.`);
  });
}

function startSession(session) {
  liveStop();
  clearTimeout(ledgerTimer);
  Object.assign(state, {
    session,
    balance: null,
    selected: new Set(),
    trades: new Map(),
    market: { ...state.market, page: 1, count: 0 },
    ledger: { entries: [], nextCursor: null },
  });
  $("#signed-in-user").textContent = session.userId;
  $("#signed-in-steam").textContent = session.steamId;
  $("#event-log").replaceChildren();
  $("#risk-profile").hidden = true;
  renderTrades();
  $("#store").hidden = false;
  liveConnect(); // the views are fetched once the socket is ready (see liveMessage)
}

// -- Live updates: WS /v1/ws -----------------------------------------------------------------------------------
//
//  - Authenticate with the first message, {"type": "auth", "token": ...}, rather than ?token=: URLs end up in logs.
//  - Keep the id of the last event applied. Connecting without ?since= starts from now (the views are then fetched
//    once `ready` arrives, so nothing falls between the fetch and the first event); reconnecting with
//    ?since=<id> replays every event missed meanwhile, in order, none twice.
//  - "resync": the server no longer has what was missed; refetch every view.
//  - Close 4401: the JWT expired, renew it first. Anything else: reconnect, backing off with jitter.
//  - Every event carries a whole object (a trade exactly as GET /v1/trades/{id}, the balance exactly as
//    GET /v1/balance): apply it, no need to fetch.

const live = { socket: null, lastEventId: null, readyLastEventId: null, retries: 0, timer: null, ping: null };

function liveConnect() {
  const url = new URL(API + "/v1/ws", location.origin);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (live.lastEventId !== null) url.searchParams.set("since", String(live.lastEventId));
  const socket = new WebSocket(url);
  live.socket = socket;
  setLiveStatus("connecting");
  socket.onopen = () => socket.send(JSON.stringify({ type: "auth", token: state.session.token }));
  socket.onmessage = ({ data }) => liveMessage(JSON.parse(data));
  socket.onclose = (event) => liveClosed(socket, event);
  clearInterval(live.ping);
  live.ping = setInterval(() => socket.readyState === WebSocket.OPEN && socket.send('{"type":"ping"}'), 25000);
}

function liveStop() {
  clearTimeout(live.timer);
  clearInterval(live.ping);
  const socket = live.socket;
  Object.assign(live, { socket: null, lastEventId: null, readyLastEventId: null, retries: 0 });
  if (socket) socket.close(1000, "signed out");
}

function liveMessage(message) {
  if (message.type === "pong") return;
  logEvent(message);
  if (message.type === "ready") {
    live.retries = 0;
    live.readyLastEventId = message.data.lastEventId;
    setLiveStatus("live");
    if (live.lastEventId === null) {
      live.lastEventId = message.data.lastEventId;
      refetchViews();
    }
    return;
  }
  if (message.type === "resync") {
    live.lastEventId = live.readyLastEventId;
    refetchViews();
    return;
  }
  if (message.id !== null && message.id <= live.lastEventId) return; // seen already (the server never repeats)
  if (message.type === "trade.updated") applyTrade(message.data);
  if (message.type === "balance.updated") {
    state.balanceVersion += 1;
    applyBalance(message.data);
    ledgerChanged(); // a new balance means new ledger entries
  }
  if (message.id !== null) live.lastEventId = message.id;
}

function liveClosed(socket, { code }) {
  if (socket !== live.socket) return; // an old socket (signed out, or replaced)
  clearInterval(live.ping);
  if (code === 4401) {
    setLiveStatus("renewing");
    renewSession().then(liveConnect, (error) => {
      setLiveStatus("offline");
      showError(error);
    });
    return;
  }
  if (code === 4400) live.lastEventId = null; // our ?since= was refused: start afresh (the views are refetched)
  const base = code === 4429 ? 30000 : Math.min(30000, 1000 * 2 ** live.retries); // 4429: too many tabs open
  live.retries += 1;
  setLiveStatus("reconnecting");
  live.timer = setTimeout(liveConnect, base / 2 + Math.random() * (base / 2));
}

function setLiveStatus(text) {
  const badge = $("#live-status");
  badge.textContent = text;
  badge.dataset.state = text;
}

// -- Views -----------------------------------------------------------------------------------------------------

async function refetchViews() {
  await Promise.all([loadBalance(), loadTrades(), loadInventory(), loadMarket(), loadLedger()]).catch(showError);
}

async function loadBalance() {
  const version = state.balanceVersion;
  const balance = await api("/v1/balance");
  if (version === state.balanceVersion) applyBalance(balance); // else a newer one came over the socket meanwhile
}

function applyBalance(balance) {
  state.balance = balance;
  const available = Money.parse(balance.available);
  $("#balance-available").textContent = Money.show(available);
  $("#balance-available").classList.toggle("negative", available < 0n);
  $("#balance-pending").textContent = Money.show(balance.pending);
  const debt = $("#balance-debt");
  // A deposit reversed after its instant credit was spent leaves a debt: show it plainly, never hide or clip it.
  debt.hidden = available >= 0n;
  debt.textContent =
    available < 0n
      ? `You owe ${Money.show(-available)}: a deposit was reversed after its instant credit was spent. ` +
        "What you deposit next pays it back first."
      : "";
}

async function loadTrades() {
  const page = await api("/v1/trades", { query: { limit: 20 } });
  page.trades.forEach(applyTrade);
}

function applyTrade(trade) {
  const known = state.trades.get(trade.id);
  if (known && Date.parse(trade.updatedAt) < Date.parse(known.trade.updatedAt)) return; // older than what we show
  const timeline = known ? known.timeline : [];
  if (timeline.at(-1)?.status !== trade.status) timeline.push({ status: trade.status, at: trade.updatedAt });
  state.trades.set(trade.id, { trade, timeline });
  renderTrades();
  const skinsCameBack = trade.type === "deposit" && FINAL.has(trade.status) && trade.status !== "completed";
  if (skinsCameBack && !(known && FINAL.has(known.trade.status))) loadInventory().catch(showError);
}

function renderTrades() {
  const cards = [...state.trades.values()]
    .sort((a, b) => Date.parse(b.trade.createdAt) - Date.parse(a.trade.createdAt))
    .map(({ trade, timeline }) => tradeCard(trade, timeline));
  $("#trade-list").replaceChildren(...(cards.length ? cards : [h("li", { class: "muted" }, "No trades yet.")]));
}

function tradeCard(trade, timeline) {
  const deposit = trade.type === "deposit";
  const names = trade.items.map((item) => item.name ?? item.marketHashName ?? item.id).join(", ");
  const amounts = deposit
    ? [["instant", trade.preCredit], ["after the hold", trade.pendingCredit], ["credited so far", trade.credited]]
    : [["charged so far", trade.credited]];
  return h(
    "li",
    { class: "trade", dataset: { tradeId: trade.id, status: trade.status, type: trade.type } },
    h(
      "div",
      { class: "trade-head" },
      h("strong", {}, deposit ? "Deposit" : "Withdrawal"),
      h("span", { class: `status status-${trade.status}` }, trade.status),
      h("span", { class: "num" }, Money.show(trade.totalPrice)),
      h("span", { class: "muted" }, GAME_NAMES[trade.game] ?? trade.game),
    ),
    h("div", { class: "trade-items" }, names),
    h(
      "dl",
      { class: "amounts" },
      ...amounts.flatMap(([label, value]) => [h("dt", {}, label), h("dd", { class: "num" }, Money.show(value))]),
    ),
    trade.error ? h("div", { class: "trade-error" }, h("code", {}, trade.error)) : null,
    h(
      "ol",
      { class: "timeline" },
      ...timeline.map((step) =>
        h("li", { dataset: { status: step.status } }, step.status, " ", h("time", {}, clock(step.at))),
      ),
    ),
    sandboxControls(trade),
  );
}

// Inventory and the instant-credit estimate.

async function loadInventory({ refresh = false } = {}) {
  const game = $("#inventory-game").value;
  const page = await api("/v1/inventory", { query: { game, refresh: refresh || undefined, limit: 100 } });
  state.inventory = { game, items: page.items, collateral: page.collateral };
  const present = new Set(page.items.map((item) => item.id));
  state.selected = new Set([...state.selected].filter((id) => present.has(id)));
  renderInventory();
}

function renderInventory() {
  $("#collateral").textContent = Money.show(state.inventory.collateral);
  const rows = state.inventory.items.map((item) => {
    const usable = item.accepted !== false && Boolean(item.price);
    const box = h("input", { type: "checkbox", disabled: !usable, checked: state.selected.has(item.id) });
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(item.id);
      else state.selected.delete(item.id);
      renderEstimate();
    });
    const amount = Number(item.amount ?? "1");
    return h(
      "tr",
      { dataset: { itemId: item.id }, class: usable ? "" : "muted" },
      h("td", {}, box),
      h("td", {}, item.marketHashName ?? item.name, amount > 1 ? ` ×${amount}` : "", usable ? "" : " (not accepted)"),
      h("td", { class: "num" }, item.price ? Money.show(item.price) : "–"),
    );
  });
  $("#inventory-items").replaceChildren(...rows);
  renderEstimate();
}

function selectedItems() {
  return state.inventory.items.filter((item) => state.selected.has(item.id));
}

/**
 * What the user gets for the selected items. AssetPay's `collateral` (GET /v1/inventory) is the instant credit
 * available to this user right now (what their deposits in flight already use is taken off). A CS2 deposit is
 * credited min(total, collateral) when it enters hold (its preCredit), and the rest (its pendingCredit) when the
 * 7-day Steam trade hold ends. Rust has no trade hold: always credited in full, at once. With instant credit
 * off, a CS2 deposit is credited in full at the end.
 */
function estimate(totalUnits) {
  if (state.inventory.game === RUST) return { now: totalUnits, later: 0n };
  const instant = $("#is-instant").checked ? Money.min(totalUnits, Money.parse(state.inventory.collateral)) : 0n;
  return { now: instant, later: totalUnits - instant };
}

function renderEstimate() {
  const items = selectedItems();
  const total = Money.sum(items.map((item) => Money.parse(item.price) * BigInt(item.amount ?? "1")));
  const { now, later } = estimate(total);
  $("#estimate").textContent = items.length
    ? `${items.length} selected, worth ${Money.show(total)}: you get ${Money.show(now)} now, ` +
      `${Money.show(later)} in 7 days.`
    : "Select items to see what you get.";
  $("#deposit-button").disabled = items.length === 0;
}

async function deposit() {
  const body = {
    game: state.inventory.game,
    isInstant: $("#is-instant").checked,
    // The prices exactly as shown (strings): if AssetPay's price moved meanwhile, the deposit is refused with
    // PRICE_CHANGED instead of going through at a price the user never saw.
    items: selectedItems().map((item) => ({ itemId: item.id, price: item.price, amount: Number(item.amount ?? "1") })),
  };
  await busy($("#deposit-button"), async () => {
    try {
      const trade = await startTrade("/v1/deposits", body);
      [trade, ...(trade.relatedTrades ?? [])].forEach(applyTrade);
      showInfo(`Deposit started: accept the Steam trade offer. Its progress shows below as it happens.`);
      state.selected.clear();
      await loadInventory(); // the deposited skins have left the inventory
    } catch (error) {
      if (error.key === "PRICE_CHANGED" || error.key === "ITEMS_UNAVAILABLE") await loadInventory();
      throw error;
    }
  });
}

// Market and withdrawals.

function marketQuery() {
  return {
    game: $("#market-game").value,
    search: $("#market-search").value.trim(),
    sort: $("#market-sort").value,
    minPrice: $("#market-min").value.trim(), // decimal strings, as typed; the API says when one is not
    maxPrice: $("#market-max").value.trim(),
    perPage: $("#market-per-page").value,
    page: state.market.page,
  };
}

async function loadMarket() {
  const query = marketQuery();
  const page = await api("/v1/market", { query });
  const perPage = Number(query.perPage) || 50;
  Object.assign(state.market, { count: page.count, perPage });
  const pages = Math.max(1, Math.ceil(page.count / perPage));
  $("#market-page").textContent = `Page ${state.market.page} of ${pages} · ${page.count} listings`;
  $("#market-prev").disabled = state.market.page <= 1;
  $("#market-next").disabled = state.market.page >= pages;
  const rows = page.items.map((listing) => {
    const button = h("button", { type: "button", class: "buy" }, "Buy");
    button.addEventListener("click", () => busy(button, () => withdraw(query.game, listing)));
    return h(
      "tr",
      { dataset: { itemId: listing.id, price: listing.price } },
      h("td", {}, listing.marketHashName ?? listing.name),
      h("td", { class: "num" }, Money.show(listing.price)),
      h("td", {}, button),
    );
  });
  $("#market-items").replaceChildren(...rows);
}

async function withdraw(game, listing) {
  // `maxPrice` (optional, per item) would let the purchase go through if the price rose a little; without it the
  // user pays at most the price shown. A balance that cannot cover it is refused up front: 402 INSUFFICIENT_BALANCE.
  const body = { game, items: [{ itemId: listing.id, price: listing.price }] };
  try {
    const trade = await startTrade("/v1/withdrawals", body);
    [trade, ...(trade.relatedTrades ?? [])].forEach(applyTrade);
    showInfo(`Bought ${listing.marketHashName ?? listing.name} for ${Money.show(listing.price)}: it is on its way.`);
  } catch (error) {
    if (error.key === "PRICE_CHANGED" || error.key === "ITEMS_UNAVAILABLE") await loadMarket();
    throw error;
  }
}

// The ledger (cursor paging).

const KIND_LABELS = {
  pre_credit: "instant credit",
  credit: "credit",
  reversal: "reversal",
  debit: "purchase",
  refund: "refund",
  adjustment: "adjustment",
};

let ledgerQueue = Promise.resolve();

/** Ledger reads run one after the other: "older" must follow on from the page shown before it. */
function queueLedger(read) {
  const run = ledgerQueue.then(read);
  ledgerQueue = run.catch(() => {});
  return run;
}

function ledgerLimit() {
  return $("#ledger-limit").value || "10";
}

function loadLedger({ older = false } = {}) {
  return queueLedger(async () => {
    const cursor = older ? state.ledger.nextCursor : undefined;
    const page = await api("/v1/ledger", { query: { limit: ledgerLimit(), cursor } });
    const entries = older ? [...state.ledger.entries, ...page.entries] : page.entries;
    state.ledger = { entries, nextCursor: page.nextCursor };
    renderLedger();
  });
}

let ledgerTimer = null;

/** A new balance means new entries: they are put on top, and the older pages the user opened stay. */
function ledgerChanged() {
  clearTimeout(ledgerTimer);
  ledgerTimer = setTimeout(() => {
    queueLedger(async () => {
      const newest = state.ledger.entries[0]?.id ?? 0;
      const page = await api("/v1/ledger", { query: { limit: ledgerLimit() } });
      const fresh = page.entries.filter((entry) => entry.id > newest);
      if (fresh.length === page.entries.length) state.ledger = page; // all new: what was shown may not follow on
      else state.ledger.entries = [...fresh, ...state.ledger.entries];
      renderLedger();
    }).catch(showError);
  }, 200);
}

function renderLedger() {
  const rows = state.ledger.entries.map((entry) =>
    h(
      "tr",
      { dataset: { entryId: String(entry.id), kind: entry.kind } },
      h("td", {}, String(entry.id)),
      h("td", {}, clock(entry.createdAt)),
      h("td", {}, KIND_LABELS[entry.kind] ?? entry.kind),
      h("td", { class: `num ${Money.parse(entry.amount) < 0n ? "negative" : ""}` }, Money.show(entry.amount)),
      h("td", { class: "num" }, Money.show(entry.balanceAfter)),
      h("td", { class: "muted" }, entry.tradeId ? entry.tradeId.slice(0, 8) : "–"),
    ),
  );
  const empty = h("tr", {}, h("td", { colspan: 6 }, "Nothing yet."));
  $("#ledger-entries").replaceChildren(...(rows.length ? rows : [empty]));
  $("#ledger-more").hidden = state.ledger.nextCursor === null;
}

// -- Simulate: SANDBOX ONLY ------------------------------------------------------------------------------------
//
// The simulator's control routes stand in for what happens outside your site: the user accepting the Steam offer,
// the 7-day hold ending, or a reversal. The real AssetPay has none of this. Their answers are not used to update
// the page: the backend hears of each change through AssetPay's callback and the page through the WebSocket, as
// it would in production.

async function sandbox(path, { method = "GET" } = {}) {
  const response = await fetch(SANDBOX + path, { method });
  const text = await response.text();
  if (!response.ok) {
    let error = {};
    try {
      error = JSON.parse(text).error ?? {};
    } catch {}
    throw new ApiError(response.status, error.key ?? `HTTP_${response.status}`, error.message ?? text.slice(0, 200));
  }
  return text; // AssetPay's envelope, money as JSON numbers: shown as is, never computed with
}

function sandboxControls(trade) {
  if (FINAL.has(trade.status) || !trade.assetpayId) return null;
  const ref = encodeURIComponent(trade.assetpayId);
  const actions = [
    ["Step", "step", ""],
    ["Complete", "complete", "?to=completed"],
    ...(trade.type === "deposit" && trade.status === "hold" ? [["Revert", "revert", "?to=reverted"]] : []),
    ["Fail", "fail", "?to=failed"],
  ];
  return h(
    "div",
    { class: "sandbox-controls" },
    h("span", { class: "tag sandbox" }, "sandbox"),
    ...actions.map(([label, action, query]) => {
      const button = h("button", { type: "button", dataset: { action } }, label);
      const advance = () => sandbox(`/trades/${ref}/advance${query}`, { method: "POST" });
      button.addEventListener("click", () => busy(button, advance));
      return button;
    }),
  );
}

async function showRiskProfile() {
  const profile = await sandbox(`/users/${encodeURIComponent(state.session.steamId)}`);
  $("#risk-profile").textContent = profile;
  $("#risk-profile").hidden = false;
}

// -- Page helpers ----------------------------------------------------------------------------------------------

function $(selector) {
  return document.querySelector(selector);
}

/** A DOM element; children that are strings become text nodes, so API data is never parsed as HTML. */
function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name === "dataset") Object.assign(element.dataset, value);
    else if (name === "class") element.className = value;
    else if (typeof value === "boolean") element[name] = value;
    else element.setAttribute(name, value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

function clock(iso) {
  return new Date(iso).toLocaleTimeString();
}

/** What an error key means for the user; the key itself is shown too (and is what code should branch on). */
const EXPLAIN = {
  INSUFFICIENT_BALANCE: "Your balance does not cover this purchase.",
  PRICE_CHANGED: "A price changed: the list is refreshed, check the new price and try again.",
  ITEMS_UNAVAILABLE: "Some items are no longer available: the list is refreshed.",
  TOO_MANY_ACTIVE_TRADES: "Too many trades are waiting for you: finish one first.",
  RATE_LIMITED: "Too many requests: wait a moment and try again.",
  INVENTORY_PRIVATE: "Your Steam inventory is private: make it public, then refresh.",
  USER_NOT_TRADEABLE: "Your Steam account cannot trade right now.",
  USER_NOT_FOUND: "The platform has not registered this user yet.",
  VALIDATION_FAILED: "Some values were not accepted.",
  OUTCOME_UNKNOWN: "The answer was lost on the way. The trade is recorded and will settle: do not start it again.",
  UPSTREAM_TIMEOUT: "AssetPay is slow to answer. The trade is recorded and will settle: do not start it again.",
  NETWORK_ERROR: "No connection: check your network and try again.",
};

function showError(error) {
  if (!(error instanceof ApiError)) {
    console.error(error);
    error = new ApiError(0, "UNEXPECTED", String(error?.message ?? error));
  }
  const fields = Object.entries(error.fields ?? {}).map(([field, reason]) =>
    h("li", {}, h("code", {}, field), ` ${reason}`),
  );
  notice(
    "error",
    h("code", { class: "key" }, error.key),
    " ",
    EXPLAIN[error.key] ?? "",
    " ",
    h("span", { class: "muted" }, error.message),
    fields.length ? h("ul", {}, ...fields) : null,
  );
}

function showInfo(text) {
  notice("info", text);
}

function notice(kind, ...content) {
  const box = $("#notice");
  box.className = `notice ${kind}`;
  box.dataset.kind = kind;
  box.replaceChildren(...content.filter((part) => part !== null));
  box.hidden = false;
}

function logEvent(message) {
  const summary =
    message.type === "trade.updated"
      ? `${message.data.type} ${message.data.status} ${Money.show(message.data.totalPrice)}`
      : message.type === "balance.updated"
        ? `available ${Money.show(message.data.available)}, pending ${Money.show(message.data.pending)}`
        : JSON.stringify(message.data);
  const entry = h(
    "li",
    { dataset: { type: message.type } },
    h("code", {}, message.id === null ? "·" : `#${message.id}`),
    ` ${message.type} `,
    h("span", { class: "muted" }, summary),
  );
  const log = $("#event-log");
  log.prepend(entry);
  while (log.children.length > 50) log.lastElementChild.remove();
}

/** Run an action from a button: disabled while it runs, its error shown to the user. */
async function busy(button, action) {
  button.disabled = true;
  try {
    await action();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

// -- Wiring ----------------------------------------------------------------------------------------------------

$("#preset").addEventListener("change", (event) => fillPreset(event.target.value));
$("#session-form").addEventListener("submit", signIn);
$("#inventory-game").addEventListener("change", () => {
  state.selected.clear();
  loadInventory().catch(showError);
});
$("#inventory-refresh").addEventListener("click", (event) =>
  busy(event.target, () => loadInventory({ refresh: true })),
);
$("#is-instant").addEventListener("change", renderEstimate);
$("#deposit-button").addEventListener("click", (event) => busy(event.target, deposit).then(renderEstimate));
$("#market-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.market.page = 1;
  loadMarket().catch(showError);
});
$("#market-prev").addEventListener("click", () => {
  state.market.page -= 1;
  loadMarket().catch(showError);
});
$("#market-next").addEventListener("click", () => {
  state.market.page += 1;
  loadMarket().catch(showError);
});
$("#ledger-limit").addEventListener("change", () => loadLedger().catch(showError));
$("#ledger-more").addEventListener("click", (event) => busy(event.target, () => loadLedger({ older: true })));
$("#sandbox-step").addEventListener("click", (event) => busy(event.target, () => sandbox("/step", { method: "POST" })));
$("#risk-refresh").addEventListener("click", (event) => busy(event.target, showRiskProfile));
fillPreset($("#preset").value);
