/*
 * Prism — live operations dashboard (browser side).
 *
 * Reads the dashboard projector's API:
 *   GET v1/dashboard/summary  every tile, window, top list, the feed and pipeline health;
 *   GET v1/dashboard/series   one counter over time (chart history);
 *   GET v1/dashboard/stream   server-sent events read through fetch() (so the bearer token
 *                             can be sent), one `summary` frame per change.
 *
 * Plain ES2020, no dependencies, no build step, nothing inline (CSP: script-src 'self').
 * Text from the API reaches the DOM only through textContent or setAttribute. Rendering is
 * incremental: a text node is written only when its text changed, table rows are reused,
 * feed rows are keyed by id, and a chart is redrawn only when its data or its size changed.
 */
'use strict';

// ---- Settings -------------------------------------------------------------------------------

const TOKEN_KEY = 'prism-dashboard-token';
const WINDOW_LABELS = { '1m': 'last minute', '15m': 'last 15 minutes', '1h': 'last hour', '24h': 'last 24 hours' };
const EVENTS_SPAN_MS = 10 * 60 * 1000; // events chart: 10 minutes of 1 s points
const VOLUME_SPAN_MS = 24 * 60 * 60 * 1000; // volume chart: 24 hours of 1 min points
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 5000;
const STREAM_IDLE_MS = 45000; // the server writes at least every 15 s; silence beyond this is a dead link
const SERIES_RETRY_MS = 5000; // a failed history load is retried on a later frame, at most this often
const DECLINE_WARN_BP = 500; // decline-rate badge: "elevated" from 5 %, "high" from 10 %
const DECLINE_BAD_BP = 1000;
const FEED_MAX = 50;
const SVG_NS = 'http://www.w3.org/2000/svg';
const TYPE_LABELS = { // feed entries carry the event's CloudEvents type
  'prism.account.money_deposited': 'Deposit',
  'prism.account.money_withdrawn': 'Withdrawal',
  'prism.account.card_payment_approved': 'Card payment',
  'prism.account.card_payment_declined': 'Card declined',
};

// ---- State ----------------------------------------------------------------------------------

const state = {
  token: null,
  windowKey: '15m',
  summary: null, // the summary on screen (from the endpoint or the latest frame)
  tick: null, // tick of the last stream frame
  framesSeen: 0, // stream frames received since load (orders endpoint answers against frames)
  lastFrame: null,
  events: { points: [], version: 0, seq: 0, error: null, failedAt: 0 },
  // `chosen`: the default currency has been picked (once, on the first summary).
  volume: { currency: null, chosen: false, in: [], out: [], version: 0, seq: 0, error: null, failedAt: 0 },
  stream: { gen: 0, ctl: null, lastActivity: 0, backoff: BACKOFF_MIN_MS },
  renderPending: false,
};

const el = {}; // element references, filled by init()
const charts = {}; // the three SVG charts, filled by init()

// ---- Formatting -----------------------------------------------------------------------------

/** "1234567" → "1,234,567" (works on digit strings of any length). */
function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

function formatCount(n) {
  return Number.isFinite(n) ? group(String(Math.trunc(n))) : '–';
}

/** Integer minor units → "12,345.67 EUR", exactly (BigInt integer division, no floats). */
function formatMoney(minor, currency) {
  let v;
  try {
    v = BigInt(minor);
  } catch {
    return '–';
  }
  const exp = state.summary?.currencies?.[currency];
  const digits = Number.isInteger(exp) && exp >= 0 ? exp : 2;
  const negative = v < 0n;
  if (negative) v = -v;
  const base = 10n ** BigInt(digits);
  const whole = group((v / base).toString());
  const fraction = digits > 0 ? `.${(v % base).toString().padStart(digits, '0')}` : '';
  return `${negative ? '-' : ''}${whole}${fraction}${currency ? ` ${currency}` : ''}`;
}

/** Basis points → "4.25 %"; null (no card payment) → "–". */
function formatBp(bp) {
  if (!Number.isInteger(bp)) return '–';
  return `${Math.trunc(bp / 100)}.${String(Math.abs(bp % 100)).padStart(2, '0')} %`;
}

/** An integer count over 10 s → events per second with one decimal ("12.3"). */
function formatTenths(n) {
  if (!Number.isInteger(n) || n < 0) return '–';
  return `${group(String(Math.floor(n / 10)))}.${n % 10}`;
}

/** ISO time or epoch ms → "18:39:59" (UTC), or "2026-11-28 18:39:59 UTC" with the date. */
function utcTime(time, withDate = false) {
  const d = new Date(time);
  if (time == null || Number.isNaN(d.getTime())) return '–';
  const iso = d.toISOString();
  return withDate ? `${iso.slice(0, 10)} ${iso.slice(11, 19)} UTC` : iso.slice(11, 19);
}

function humanize(code) {
  return code == null ? '–' : String(code).replace(/_/g, ' ');
}

function orDash(value) {
  return value == null || value === '' ? '–' : String(value);
}

// ---- DOM helpers ----------------------------------------------------------------------------

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

function setClass(node, className) {
  if (node.className !== className) node.className = className;
}

/** Makes `container` show one <div> per line, reusing the divs it already has. */
function setLines(container, lines) {
  if (container.firstChild && container.firstChild.nodeType !== Node.ELEMENT_NODE) container.textContent = '';
  while (container.children.length > lines.length) container.lastElementChild.remove();
  lines.forEach((line, i) => {
    const div = container.children[i] || container.appendChild(document.createElement('div'));
    setText(div, line);
  });
}

/**
 * Makes a table body show `rows` (arrays of cells: a string, or {text, cls, title}),
 * reusing rows and cells; an empty list shows `emptyText` across `columns` columns.
 */
function syncRows(tbody, rows, columns, emptyText) {
  const wanted = rows.length ? rows : [[{ text: emptyText, cls: 'empty', span: columns }]];
  while (tbody.rows.length > wanted.length) tbody.lastElementChild.remove();
  wanted.forEach((cells, i) => {
    const tr = tbody.rows[i] || tbody.appendChild(document.createElement('tr'));
    if (tr.cells.length !== cells.length) {
      tr.replaceChildren(...cells.map(() => document.createElement('td')));
    }
    cells.forEach((cell, j) => {
      const td = tr.cells[j];
      const spec = typeof cell === 'object' ? cell : { text: cell };
      setText(td, spec.text);
      setClass(td, spec.cls || '');
      if (spec.span) td.colSpan = spec.span;
      if (spec.title !== undefined && td.title !== spec.title) td.title = spec.title;
    });
  });
}

function svgEl(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- API ------------------------------------------------------------------------------------

function authHeaders(token, accept) {
  const headers = { Accept: accept };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

/** An error from a non-2xx answer, with the problem+json title/detail when there is one. */
async function httpError(res) {
  let message = `HTTP ${res.status}`;
  if ((res.headers.get('Content-Type') || '').includes('json')) {
    try {
      const problem = await res.json();
      message = [problem.title, problem.detail].filter(Boolean).join(': ') || message;
    } catch {
      // Not JSON after all: keep the status line.
    }
  }
  return new Error(message);
}

/**
 * A 401 (token not accepted) or 403 (token without the scope dashboard:read) for the token in
 * use (not a stale one) stops everything and asks for a token.
 */
function checkAuth(res, token) {
  if ((res.status === 401 || res.status === 403) && token === state.token) needToken(res.status === 403);
}

async function getJson(path) {
  const token = state.token;
  const res = await fetch(path, { headers: authHeaders(token, 'application/json'), cache: 'no-store' });
  checkAuth(res, token);
  if (!res.ok) throw await httpError(res);
  return res.json();
}

// ---- Authentication -------------------------------------------------------------------------

/** Takes `#token=…` out of the URL into sessionStorage; returns the token to use, if any. */
function readToken() {
  const parts = location.hash.replace(/^#/, '').split('&').filter(Boolean);
  const found = parts.find((p) => p.startsWith('token='));
  try {
    if (found) {
      sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(found.slice('token='.length)));
      const rest = parts.filter((p) => p !== found).join('&');
      history.replaceState(null, '', location.pathname + location.search + (rest ? `#${rest}` : ''));
    }
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    // Storage disabled or a malformed escape: go on without a stored token.
    return null;
  }
}

/** Stops the stream and shows the token form (the server answered 401, or 403: `forbidden`). */
function needToken(forbidden = false) {
  const stream = state.stream;
  stream.gen++;
  if (stream.ctl) stream.ctl.abort();
  const rejected = Boolean(state.token);
  state.token = null;
  try {
    sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // Storage disabled: nothing stored to forget.
  }
  setConnection('auth');
  let message = 'This dashboard needs an API token.';
  if (forbidden) message = 'This token may not read the dashboard (it lacks the scope dashboard:read). Enter another token.';
  else if (rejected) message = 'The token was rejected. Enter a valid token.';
  setText(el.tokenMessage, message);
  if (el.tokenForm.hidden) {
    el.tokenForm.hidden = false;
    el.tokenInput.focus();
  }
}

function onTokenSubmit(event) {
  event.preventDefault();
  const token = el.tokenInput.value.trim();
  if (!token) return;
  state.token = token;
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Storage disabled: the token lives for this page only.
  }
  el.tokenInput.value = '';
  el.tokenForm.hidden = true;
  connect();
}

// ---- Live stream ----------------------------------------------------------------------------

/** Shows the connection state in the header and, while reconnecting, a banner. */
function setConnection(mode, detail = '') {
  const views = {
    connecting: ['Connecting…', 'conn conn-wait'],
    live: ['Live', 'conn conn-live'],
    reconnecting: ['Reconnecting…', 'conn conn-down'],
    auth: ['Token required', 'conn conn-wait'],
  };
  const [text, cls] = views[mode];
  setText(el.connState, text);
  setClass(el.connState, cls);
  el.banner.hidden = mode !== 'reconnecting';
  if (mode === 'reconnecting') setText(el.banner, `Reconnecting… ${detail}`);
}

/** (Re)starts the stream from scratch, e.g. with a new token. */
function connect() {
  const stream = state.stream;
  stream.gen++;
  if (stream.ctl) stream.ctl.abort();
  stream.backoff = BACKOFF_MIN_MS;
  setConnection('connecting');
  runStream(stream.gen);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Keeps one stream open while `gen` is current: on every (re)connection it reloads the summary
 * and the chart history, then applies frames; on failure it waits (0.5 s doubling up to 5 s).
 */
async function runStream(gen) {
  const stream = state.stream;
  while (gen === stream.gen) {
    const ctl = new AbortController();
    stream.ctl = ctl;
    stream.lastActivity = Date.now();
    let reason = 'connection lost';
    try {
      const token = state.token;
      const res = await fetch('v1/dashboard/stream', {
        headers: authHeaders(token, 'text/event-stream'),
        cache: 'no-store',
        signal: ctl.signal,
      });
      checkAuth(res, token);
      if (gen !== stream.gen) return;
      if (!res.ok || !res.body) throw await httpError(res);
      setConnection('live');
      refreshAll();
      await readEvents(res.body.getReader());
      reason = 'the server closed the stream';
    } catch (err) {
      if (gen !== stream.gen) return;
      reason = err.name === 'AbortError' ? 'no data from the server' : err.message || reason;
    }
    if (gen !== stream.gen) return;
    setConnection('reconnecting', `(${reason}; next attempt in ${stream.backoff / 1000} s)`);
    await sleep(stream.backoff);
    stream.backoff = Math.min(stream.backoff * 2, BACKOFF_MAX_MS);
  }
}

/** Reads the body to its end, feeding an SSE parser. */
async function readEvents(reader) {
  const decoder = new TextDecoder();
  const feed = sseParser(onServerEvent);
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    state.stream.lastActivity = Date.now();
    feed(decoder.decode(value, { stream: true }));
  }
}

/**
 * A text/event-stream parser: returns a function taking text chunks; calls
 * dispatch(type, data) per complete event. Comment lines (":") are keep-alives.
 */
function sseParser(dispatch) {
  let buffer = '';
  let type = '';
  let data = [];
  return (chunk) => {
    buffer += chunk;
    for (;;) {
      const eol = /\r\n|\r|\n/.exec(buffer);
      if (!eol) return;
      // A lone "\r" at the end may be the first half of "\r\n": wait for the next chunk.
      if (eol[0] === '\r' && eol.index === buffer.length - 1) return;
      const line = buffer.slice(0, eol.index);
      buffer = buffer.slice(eol.index + eol[0].length);
      if (line === '') {
        if (data.length) dispatch(type || 'message', data.join('\n'));
        type = '';
        data = [];
      } else if (line[0] !== ':') {
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value[0] === ' ') value = value.slice(1);
        if (field === 'data') data.push(value);
        else if (field === 'event') type = value;
      }
    }
  };
}

/** One `summary` frame: merge its live buckets into the charts and show it. */
function onServerEvent(type, data) {
  if (type !== 'summary') return;
  let summary;
  try {
    summary = JSON.parse(data);
  } catch {
    return; // a damaged frame: the next one replaces it
  }
  state.framesSeen++;
  state.lastFrame = summary;
  state.tick = summary.tick;
  state.stream.backoff = BACKOFF_MIN_MS;
  mergeLive(summary);
  applySummary(summary);
  retryFailedSeries();
}

/** Aborts a stream that stayed silent too long (half-open connection); the loop reconnects. */
function watchdog() {
  const stream = state.stream;
  if (stream.ctl && Date.now() - stream.lastActivity > STREAM_IDLE_MS) stream.ctl.abort();
}

// ---- Data loading ---------------------------------------------------------------------------

/** After each (re)connection: the summary and every chart's history, so charts are whole. */
function refreshAll() {
  loadSummary();
  loadEventsSeries();
  loadVolumeSeries();
}

async function loadSummary() {
  const seen = state.framesSeen;
  try {
    const summary = await getJson('v1/dashboard/summary');
    if (state.framesSeen === seen) applySummary(summary); // else a newer frame is on screen
  } catch {
    // The stream brings a summary anyway; its failures show in the banner.
  }
}

function toPoints(list, key) {
  return (Array.isArray(list) ? list : [])
    .map((p) => ({ t: Date.parse(p.t), v: Number(p[key]) || 0 }))
    .filter((p) => Number.isFinite(p.t));
}

/**
 * Merges live buckets into a series (oldest first, one point per step): a point with the same
 * time is replaced, newer ones are appended (skipped steps become zeros), points older than
 * `spanMs` before the newest are dropped. Returns whether anything changed.
 */
function mergePoints(points, incoming, stepMs, spanMs) {
  let changed = false;
  for (const { t, v } of incoming) {
    const last = points[points.length - 1];
    if (!last || t > last.t) {
      if (last && t - last.t <= spanMs) {
        for (let gap = last.t + stepMs; gap < t; gap += stepMs) points.push({ t: gap, v: 0 });
      }
      points.push({ t, v });
      changed = true;
      continue;
    }
    for (let i = points.length - 1; i >= 0 && points[i].t >= t; i--) {
      if (points[i].t === t) {
        if (points[i].v !== v) {
          points[i].v = v;
          changed = true;
        }
        break;
      }
    }
  }
  if (points.length) {
    const cutoff = points[points.length - 1].t - spanMs;
    let drop = 0;
    while (drop < points.length && points[drop].t <= cutoff) drop++;
    if (drop) {
      points.splice(0, drop);
      changed = true;
    }
  }
  return changed;
}

/** Appends a frame's `seconds` to the events chart and its `minutes` to the volume chart. */
function mergeLive(summary) {
  const events = state.events;
  if (mergePoints(events.points, toPoints(summary.seconds, 'events'), 1000, EVENTS_SPAN_MS)) events.version++;
  const volume = state.volume;
  const currency = volume.currency;
  if (!currency || !Array.isArray(summary.minutes)) return;
  const pick = (field) => summary.minutes.map((m) => ({ t: Date.parse(m.t), v: Number(m[field]?.[currency]) || 0 }))
    .filter((p) => Number.isFinite(p.t));
  const changedIn = mergePoints(volume.in, pick('money_in'), 60000, VOLUME_SPAN_MS);
  const changedOut = mergePoints(volume.out, pick('money_out'), 60000, VOLUME_SPAN_MS);
  if (changedIn || changedOut) volume.version++;
}

/** Re-applies the latest frame's buckets after a history load that frames overtook. */
function remergeSince(seen) {
  if (state.framesSeen > seen && state.lastFrame) mergeLive(state.lastFrame);
}

async function loadEventsSeries() {
  const events = state.events;
  const seq = ++events.seq;
  const seen = state.framesSeen;
  try {
    const answer = await getJson('v1/dashboard/series?metric=events&window=10m');
    if (seq !== events.seq) return;
    events.points = toPoints(answer.points, 'v');
    events.error = null;
    remergeSince(seen);
  } catch (err) {
    if (seq !== events.seq) return;
    events.error = err.message;
    events.failedAt = Date.now();
  }
  events.version++;
  scheduleRender();
}

async function loadVolumeSeries() {
  const volume = state.volume;
  const currency = volume.currency;
  if (!currency) return; // chosen on the first summary, which loads it then
  const seq = ++volume.seq;
  const seen = state.framesSeen;
  const query = `window=24h&currency=${encodeURIComponent(currency)}`;
  try {
    const [moneyIn, moneyOut] = await Promise.all([
      getJson(`v1/dashboard/series?metric=money_in&${query}`),
      getJson(`v1/dashboard/series?metric=money_out&${query}`),
    ]);
    if (seq !== volume.seq) return;
    volume.in = toPoints(moneyIn.points, 'v');
    volume.out = toPoints(moneyOut.points, 'v');
    volume.error = null;
    remergeSince(seen);
  } catch (err) {
    if (seq !== volume.seq) return;
    volume.error = err.message;
    volume.failedAt = Date.now();
  }
  volume.version++;
  scheduleRender();
}

function retryFailedSeries() {
  const now = Date.now();
  if (state.events.error && now - state.events.failedAt > SERIES_RETRY_MS) loadEventsSeries();
  if (state.volume.error && now - state.volume.failedAt > SERIES_RETRY_MS) loadVolumeSeries();
}

/** Keeps the currency list in sync; picks the volume chart's default currency once. */
function syncCurrencies(summary) {
  const codes = Object.keys(summary.currencies || {}).sort();
  const select = el.volumeCurrency;
  if ([...select.options].map((o) => o.value).join() !== codes.join()) {
    select.replaceChildren(...codes.map((code) => new Option(code, code)));
  }
  const volume = state.volume;
  if (!volume.chosen && codes.length) {
    // Default: the currency with the largest money in over 24 h (compared exactly, as BigInt).
    const moneyIn = summary.windows?.['24h']?.money_in || {};
    let best = codes[0];
    for (const code of codes) {
      if (BigInt(moneyIn[code] ?? 0) > BigInt(moneyIn[best] ?? 0)) best = code;
    }
    volume.chosen = true;
    selectCurrency(best);
  }
  if (volume.currency && select.value !== volume.currency) select.value = volume.currency;
}

function selectCurrency(code) {
  const volume = state.volume;
  volume.currency = code;
  volume.in = [];
  volume.out = [];
  volume.error = null;
  volume.version++;
  loadVolumeSeries();
}

function applySummary(summary) {
  state.summary = summary;
  syncCurrencies(summary);
  scheduleRender();
}

// ---- Rendering ------------------------------------------------------------------------------

/** Coalesces updates into one render per animation frame (none while the tab is hidden). */
function scheduleRender() {
  if (state.renderPending) return;
  state.renderPending = true;
  requestAnimationFrame(render);
}

function render() {
  state.renderPending = false;
  renderEventsChart();
  renderVolumeChart();
  const summary = state.summary;
  if (!summary) return;
  const win = summary.windows?.[state.windowKey] || {};
  renderHeader(summary);
  renderTiles(summary, win);
  renderDeclines(win);
  renderTops(win);
  renderFeed(Array.isArray(summary.feed) ? summary.feed : []);
  renderPipeline(summary.pipeline);
  if (state.tick != null) document.body.dataset.tick = String(state.tick);
  document.body.dataset.events1h = String(summary.windows?.['1h']?.events ?? '');
}

function renderHeader(summary) {
  setText(el.asOf, utcTime(summary.as_of, true));
  if (summary.as_of && el.asOf.dateTime !== summary.as_of) el.asOf.dateTime = summary.as_of;
  setText(el.copy, orDash(summary.copy));
}

function moneyLines(amounts) {
  const codes = Object.keys(amounts || {}).sort();
  return codes.length ? codes.map((code) => formatMoney(amounts[code], code)) : ['0'];
}

function renderTiles(summary, win) {
  const label = WINDOW_LABELS[state.windowKey];
  for (const node of el.windowLabels) setText(node, label);
  setText(el.tiles.eventsPerSecond, formatTenths(summary.events_last_10s));
  setLines(el.tiles.moneyIn, moneyLines(win.money_in));
  setLines(el.tiles.moneyOut, moneyLines(win.money_out));

  const bp = win.decline_rate_bp;
  setText(el.tiles.declineRate, formatBp(bp));
  let badge = ['no card payments', 'badge'];
  if (Number.isInteger(bp)) {
    if (bp >= DECLINE_BAD_BP) badge = ['high', 'badge bad'];
    else if (bp >= DECLINE_WARN_BP) badge = ['elevated', 'badge warn'];
    else badge = ['normal', 'badge ok'];
  }
  setText(el.tiles.declineBadge, badge[0]);
  setClass(el.tiles.declineBadge, badge[1]);
  setText(el.tiles.declineSub, `approved ${formatCount(win.card_approved)} · declined ${formatCount(win.card_declined)} · ${label}`);

  const active = summary.active_accounts || {};
  setText(el.tiles.activeAccounts, `${formatCount(active.hour)} / ${formatCount(active.day)}`);
  const accounts = summary.accounts || {};
  setText(el.tiles.frozenAccounts, formatCount(accounts.frozen));
  setText(el.tiles.frozenSub, `open ${formatCount(accounts.open)} · closed ${formatCount(accounts.closed)}`);
  setText(el.tiles.newAccounts, formatCount(win.new_accounts));
}

function renderTops(win) {
  const ranked = (list, key) => (Array.isArray(list) ? list : []).map((entry, i) => {
    const name = orDash(entry[key]);
    return [String(i + 1), { text: name, title: name }, { text: formatCount(entry.count), cls: 'num' }];
  });
  syncRows(el.topVolume, ranked(win.top_merchants_by_volume, 'name'), 3, 'No card payments in this window');
  syncRows(el.topDeclines, ranked(win.top_merchants_by_declines, 'name'), 3, 'No declines in this window');
  syncRows(el.topCountries, ranked(win.top_countries, 'country'), 3, 'No card payments in this window');
}

// Feed rows never change once shown (an entry is immutable): keyed by id, built once.
const feedRows = new Map();

function feedRow(entry) {
  const tr = document.createElement('tr');
  if (entry.declined) tr.className = 'declined';
  const cell = (text, cls) => {
    const td = document.createElement('td');
    td.textContent = text;
    td.title = text;
    if (cls) td.className = cls;
    tr.append(td);
    return td;
  };
  cell(utcTime(entry.time));
  const type = cell(TYPE_LABELS[entry.type] || orDash(entry.type));
  if (entry.large) {
    const tag = document.createElement('span');
    tag.className = 'tag';
    tag.textContent = 'LARGE';
    type.append(tag);
  }
  cell(entry.amount_minor == null ? '–' : formatMoney(entry.amount_minor, entry.currency), 'num');
  cell(orDash(entry.merchant));
  cell(orDash(entry.country));
  cell(humanize(entry.reason));
  return tr;
}

function renderFeed(feed) {
  const tbody = el.feed;
  const shown = new Set();
  feed.slice(0, FEED_MAX).forEach((entry, i) => {
    const id = String(entry.id);
    let tr = feedRows.get(id);
    if (!tr) {
      tr = feedRow(entry);
      feedRows.set(id, tr);
    }
    shown.add(id);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  for (const [id, tr] of feedRows) {
    if (!shown.has(id)) {
      tr.remove();
      feedRows.delete(id);
    }
  }
  el.feedEmpty.hidden = shown.size > 0;
}

/** A service's state in words: DOWN, NOT READY, LAGGING (work waiting) or OK. */
function serviceState(service) {
  if (!service.up) return ['DOWN', 'state bad'];
  if (!service.ready) return ['NOT READY', 'state warn'];
  if (service.lag_events > 0 || service.relay_backlog > 0) return ['LAGGING', 'state warn'];
  return ['OK', 'state ok'];
}

function renderPipeline(pipeline) {
  const services = Array.isArray(pipeline?.services) ? pipeline.services : [];
  setText(el.pipelineChecked, pipeline?.checked_at ? `checked ${utcTime(pipeline.checked_at)} UTC` : 'not checked yet');
  const seconds = (s) => (Number.isFinite(s) ? s.toFixed(1) : '–');
  const rows = services.map((service) => {
    const [stateText, stateCls] = serviceState(service);
    const name = `${orDash(service.name)} (${orDash(service.kind)})`;
    const backlog = service.relay_backlog == null
      ? '–'
      : `${formatCount(service.relay_backlog)} (${seconds(service.relay_backlog_age_seconds)} s)`;
    const error = service.error ? String(service.error) : '';
    return [
      { text: name, title: name },
      { text: stateText, cls: stateCls },
      { text: formatCount(service.lag_events), cls: 'num' },
      { text: seconds(service.lag_seconds), cls: 'num' },
      { text: formatCount(service.dead_letters), cls: service.dead_letters > 0 ? 'num alert' : 'num' },
      { text: backlog, cls: 'num' },
      { text: error, cls: error ? 'error' : '', title: error },
    ];
  });
  syncRows(el.pipeline, rows, 7, 'No services reported yet');
}

// ---- SVG charts -----------------------------------------------------------------------------

const PAD = { left: 4, right: 6, top: 20, bottom: 22 };
const chartsByHost = new Map();

// Chart sizes come from a ResizeObserver; a size change forces a redraw on the next frame.
const resizeObserver = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const chart = chartsByHost.get(entry.target);
    chart.width = Math.floor(entry.contentRect.width);
    chart.height = Math.floor(entry.contentRect.height);
    chart.drawnKey = null;
  }
  scheduleRender();
});

/** An empty chart in `host`: grid lines, one path per line class, labels. */
function createChart(host, lineClasses) {
  const root = svgEl('svg', { class: 'plot', 'aria-hidden': 'true' });
  const grid = svgEl('g', { class: 'grid' });
  const lines = lineClasses.map((cls) => svgEl('path', { class: `line ${cls}` }));
  const labels = svgEl('g');
  root.append(grid, ...lines, labels);
  host.append(root);
  const chart = { root, grid, lines, labels, width: 0, height: 0, drawnKey: null };
  chartsByHost.set(host, chart);
  resizeObserver.observe(host);
  return chart;
}

/** True (and sizes the SVG) when the chart must be drawn for `key`; false if already shown. */
function needsDraw(chart, key) {
  if (!chart.width || !chart.height || chart.drawnKey === key) return false;
  chart.drawnKey = key;
  chart.root.setAttribute('width', chart.width);
  chart.root.setAttribute('height', chart.height);
  chart.root.setAttribute('viewBox', `0 0 ${chart.width} ${chart.height}`);
  return true;
}

/** Smallest 1, 2 or 5 × 10^n at or above `v` (a round axis top). */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= v);
}

/**
 * Draws time series (arrays of {t, v}) over the `spanMs` ending at their newest point, with
 * horizontal grid lines at `ticks` ({v, text}, the last one the axis top) and time labels.
 */
function drawLineChart(chart, seriesList, spanMs, ticks, formatX) {
  const { width, height } = chart;
  const plotWidth = width - PAD.left - PAD.right;
  const plotHeight = height - PAD.top - PAD.bottom;
  const end = Math.max(...seriesList.map((pts) => (pts.length ? pts[pts.length - 1].t : -Infinity)));
  const start = end - spanMs;
  const top = ticks[ticks.length - 1].v;
  const x = (t) => PAD.left + ((t - start) / spanMs) * plotWidth;
  const y = (v) => PAD.top + plotHeight - (top > 0 ? (Math.min(v, top) / top) * plotHeight : 0);

  seriesList.forEach((points, i) => {
    let d = '';
    for (const p of points) {
      if (p.t >= start) d += `${d ? 'L' : 'M'}${x(p.t).toFixed(1)} ${y(p.v).toFixed(1)}`;
    }
    if (d) chart.lines[i].setAttribute('d', d);
    else chart.lines[i].removeAttribute('d');
  });

  const gridLines = [];
  const labels = [];
  for (const tick of ticks) {
    const ty = y(tick.v);
    gridLines.push(svgEl('line', { x1: PAD.left, x2: width - PAD.right, y1: ty.toFixed(1), y2: ty.toFixed(1) }));
    labels.push(svgEl('text', { x: PAD.left + 2, y: (ty - 4).toFixed(1) }, tick.text));
  }
  if (Number.isFinite(end)) {
    const marks = [[start, 'start'], [start + spanMs / 2, 'middle'], [end, 'end']];
    for (const [t, anchor] of marks) {
      labels.push(svgEl('text', { x: x(t).toFixed(1), y: height - 6, 'text-anchor': anchor }, formatX(t)));
    }
  } else {
    labels.push(svgEl('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'empty' }, 'No data yet'));
  }
  chart.grid.replaceChildren(...gridLines);
  chart.labels.replaceChildren(...labels);
}

function renderEventsChart() {
  const events = state.events;
  const last = events.points[events.points.length - 1];
  let latest = 'Loading…';
  if (last) latest = `latest ${formatCount(last.v)} events/s at ${utcTime(last.t)} UTC`;
  else if (events.error) latest = `History unavailable: ${events.error}`;
  setText(el.eventsLatest, latest);

  const chart = charts.events;
  if (!needsDraw(chart, String(events.version))) return;
  let max = 0;
  for (const p of events.points) if (p.v > max) max = p.v;
  const top = niceCeil(max);
  const ticks = [0, top / 2, top].map((v) => ({ v, text: Number.isInteger(v) ? formatCount(v) : String(v) }));
  drawLineChart(chart, [events.points], EVENTS_SPAN_MS, ticks, (t) => utcTime(t));
}

function renderVolumeChart() {
  const volume = state.volume;
  const currency = volume.currency;
  const lastIn = volume.in[volume.in.length - 1];
  const lastOut = volume.out[volume.out.length - 1];
  let latest = currency ? 'Loading…' : 'Waiting for data…';
  if (currency && (lastIn || lastOut)) {
    const minute = utcTime((lastIn || lastOut).t).slice(0, 5);
    latest = `minute ${minute} UTC: in ${formatMoney(lastIn ? lastIn.v : 0, currency)} · out ${formatMoney(lastOut ? lastOut.v : 0, currency)}`;
  } else if (volume.error) {
    latest = `History unavailable: ${volume.error}`;
  }
  setText(el.volumeLatest, latest);

  const chart = charts.volume;
  if (!needsDraw(chart, `${currency} ${volume.version}`)) return;
  // The axis top is the largest value itself: its label is an exact amount, never computed.
  let max = 0;
  for (const p of volume.in) if (p.v > max) max = p.v;
  for (const p of volume.out) if (p.v > max) max = p.v;
  const ticks = max > 0 ? [{ v: 0, text: '0' }, { v: max, text: formatMoney(max, currency) }] : [{ v: 0, text: '0' }];
  drawLineChart(chart, [volume.in, volume.out], VOLUME_SPAN_MS, ticks, (t) => utcTime(t).slice(0, 5));
}

/** Declines by reason: one labelled horizontal bar per reason, largest first, counts as text. */
function renderDeclines(win) {
  const entries = Object.entries(win.declines_by_reason || {}).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  const total = entries.reduce((sum, [, count]) => sum + count, 0);
  setText(el.declinesLatest, `${formatCount(total)} declines · ${WINDOW_LABELS[state.windowKey]}`);

  const chart = charts.declines;
  if (!needsDraw(chart, JSON.stringify(entries))) return;
  const { width, height } = chart;
  const nodes = [];
  if (!entries.length) {
    nodes.push(svgEl('text', { x: width / 2, y: height / 2, 'text-anchor': 'middle', class: 'empty' }, 'No declines in this window'));
  }
  const rowHeight = Math.min(44, height / Math.max(entries.length, 1));
  const barSpace = Math.max(10, width - 90); // room left for the count after the bar
  const max = Math.max(1, ...entries.map(([, count]) => count));
  entries.forEach(([reason, count], i) => {
    const rowTop = i * rowHeight;
    const barWidth = count > 0 ? Math.max(2, (count / max) * barSpace) : 0;
    const barTop = rowTop + rowHeight * 0.48;
    const barHeight = rowHeight * 0.38;
    nodes.push(svgEl('text', { x: 0, y: (rowTop + rowHeight * 0.4).toFixed(1), class: 'bar-label' }, humanize(reason)));
    nodes.push(svgEl('rect', { x: 0, y: barTop.toFixed(1), width: barWidth.toFixed(1), height: barHeight.toFixed(1), rx: 2, class: 'bar' }));
    nodes.push(svgEl('text', { x: (barWidth + 6).toFixed(1), y: (barTop + barHeight * 0.85).toFixed(1), class: 'bar-count' }, formatCount(count)));
  });
  chart.labels.replaceChildren(...nodes);
}

// ---- Start-up -------------------------------------------------------------------------------

function init() {
  const byId = (id) => document.getElementById(id);
  const valueOf = (id) => byId(id).querySelector('.value');
  Object.assign(el, {
    connState: byId('conn-state'),
    asOf: byId('as-of'),
    copy: byId('copy'),
    banner: byId('banner'),
    windowSelect: byId('window-select'),
    volumeCurrency: byId('volume-currency'),
    tokenForm: byId('token-form'),
    tokenInput: byId('token-input'),
    tokenMessage: byId('token-message'),
    eventsLatest: byId('chart-events-latest'),
    volumeLatest: byId('chart-volume-latest'),
    declinesLatest: byId('chart-declines-latest'),
    topVolume: byId('top-merchants-volume').tBodies[0],
    topDeclines: byId('top-merchants-declines').tBodies[0],
    topCountries: byId('top-countries').tBodies[0],
    feed: byId('feed').tBodies[0],
    feedEmpty: byId('feed-empty'),
    pipeline: byId('pipeline').tBodies[0],
    pipelineChecked: byId('pipeline-checked'),
    windowLabels: document.querySelectorAll('.window-label'),
    tiles: {
      eventsPerSecond: valueOf('tile-events-per-second'),
      moneyIn: valueOf('tile-money-in'),
      moneyOut: valueOf('tile-money-out'),
      declineRate: valueOf('tile-decline-rate'),
      declineBadge: byId('tile-decline-rate').querySelector('.badge'),
      declineSub: byId('tile-decline-rate').querySelector('.sub'),
      activeAccounts: valueOf('tile-active-accounts'),
      frozenAccounts: valueOf('tile-frozen-accounts'),
      frozenSub: byId('tile-frozen-accounts').querySelector('.sub'),
      newAccounts: valueOf('tile-new-accounts'),
    },
  });
  charts.events = createChart(byId('chart-events-plot'), ['line-events']);
  charts.volume = createChart(byId('chart-volume-plot'), ['line-in', 'line-out']);
  charts.declines = createChart(byId('chart-declines-plot'), []);

  el.windowSelect.value = state.windowKey;
  el.windowSelect.addEventListener('change', () => {
    state.windowKey = el.windowSelect.value;
    scheduleRender();
  });
  el.volumeCurrency.addEventListener('change', () => {
    selectCurrency(el.volumeCurrency.value);
    scheduleRender();
  });
  el.tokenForm.addEventListener('submit', onTokenSubmit);
  // A new #token=… pasted into the address bar replaces the current one.
  window.addEventListener('hashchange', () => {
    const token = readToken();
    if (token && token !== state.token) {
      state.token = token;
      el.tokenForm.hidden = true;
      connect();
    }
  });
  setInterval(watchdog, 5000);

  state.token = readToken();
  connect();
}

init();
